"""`rpo-jax eval`: instruction-following accuracy (IFEval, IFBench, any IFEval-format prompt file) or preference
metrics on held-out pairs.

IF evaluation scores `--responses FILE`, or greedy responses generated from `--checkpoint`
(`rpo_jax.generate.generation`, turn by turn for conversations), on `--prompts FILE` or a suite's shipped prompts
(`data_pipeline.constraints.if_eval`; conversation files: `data_pipeline.constraints.multi_turn`); the pairs
suite scores `--checkpoint` against `--reference` on tokenized held-out pairs with a run config's loss settings
(`rpo_jax.train.evaluation`).
"""

from __future__ import annotations

import argparse
import functools

from data_pipeline.constraints.if_eval import IFEvalSettings, run_if_eval
from data_pipeline.errors import UserError
from data_pipeline.files import local_path_arg, write_json_atomic
from data_pipeline.storage import local_copy, storage_path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    path, arg = local_path_arg, parser.add_argument
    bucket = storage_path_arg  # a local path or gs://
    arg("--suite", choices=["ifeval", "ifbench", "pairs"], help="shipped IF prompts, or pairs (default: none)")
    arg("--prompts", type=bucket, help="IF: IFEval-format prompts or conversations (default: the --suite's prompts)")
    arg("--checkpoint", type=bucket, help="params checkpoint or HF Llama folder, e.g. a run's hf/ (default: none)")
    arg("--responses", type=bucket, help="IF: (prompt, response) or (key, responses per turn) rows (default: generate)")
    arg("--tokenizer", type=path, help="IF: tokenizer folder with a chat template (default: none)")
    arg("--limit", type=int, default=0, help="IF: only the first N prompts or conversations (0 = all)")
    arg("--per-prompt", type=bucket, help="IF: write per-prompt strict/loose verdicts as JSONL (default: none)")
    arg("--skip-unsupported", action="store_true", help="IF: leave out prompts whose ids lack shipped NLTK data")
    arg("--skip-bad", action="store_true", help="IF: leave out (and count) rows with unknown ids or another language")
    arg("--allow-missing", action="store_true", help="IF: prompts / responses without a match are not an error")
    arg("--max-new-tokens", type=int, default=512, help="IF: generation length")
    arg("--batch-size", type=int, default=16, help="sequences generated / pairs scored together")
    arg("--reference", type=bucket, help="pairs suite: reference params checkpoint or HF folder (default: none)")
    arg("--pairs", type=bucket, help="pairs suite: a `rpo-jax tokenize` output folder (default: none)")
    arg("--config", type=path, help="pairs suite: run config with the loss settings to use (default: none)")
    arg("--output", type=bucket, help="write the results (with per-id summaries) as JSON (default: print only)")


def _generator(args: argparse.Namespace):
    """Greedy generation from `--checkpoint`, loaded at the first call (after the prompts were checked) and only
    then: every later call of the run reuses the loaded model and its compiled programs."""
    if not (args.checkpoint and args.tokenizer):
        return None
    from rpo_jax.generate import generation

    settings = generation.GenerationSettings(
        temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )

    @functools.cache
    def loaded():
        return generation.load_for_sampling(args.checkpoint, args.tokenizer)

    return lambda prompts, out: generation.generate_with_model(loaded(), prompts, out, settings)


def run(args: argparse.Namespace) -> int:
    for name in ("prompts", "responses", "pairs"):  # read from local disk: gs:// ones are copied there first
        setattr(args, name, getattr(args, name) and local_copy(getattr(args, name), "inputs"))
    if args.suite != "pairs":
        names = ("suite", "prompts", "responses", "limit", "skip_unsupported", "skip_bad", "allow_missing")
        names += ("per_prompt", "output")
        run_if_eval(IFEvalSettings(**{n: getattr(args, n) for n in names}), _generator(args))
        return 0
    if not (args.checkpoint and args.pairs and args.config):
        raise UserError("--suite pairs needs --checkpoint, --pairs and --config")
    from rpo_jax.config.loading import load_config
    from rpo_jax.train.evaluation import evaluate_pairs

    results = evaluate_pairs(load_config(args.config), args.checkpoint, args.reference, args.pairs, args.batch_size)
    print("\n".join(f"{key:<24}  {value:.4f}" for key, value in sorted(results.items())))
    if args.output:
        write_json_atomic(args.output, results)
    return 0
