"""`rpo-jax eval`: instruction-following accuracy (IFEval, IFBench) or preference metrics on held-out pairs.

IF suites score `--responses FILE` or greedy responses generated from `--checkpoint` (`rpo_jax.generation`) on
the shipped prompts (`data_pipeline.constraints.scoring`); the pairs suite scores `--checkpoint` against
`--reference` on tokenized held-out pairs with a run config's loss settings (`rpo_jax.evaluation`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from data_pipeline.constraints import scoring
from data_pipeline.errors import UserError
from data_pipeline.files import local_path_arg, write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--suite", required=True, choices=["ifeval", "ifbench", "pairs"], help="what to evaluate")
    arg("--checkpoint", type=local_path_arg, help="params checkpoint or HF folder, e.g. a run's hf/ (default: none)")
    arg("--responses", type=local_path_arg, help="IF suites: score these responses (default: generate them)")
    arg("--tokenizer", type=local_path_arg, help="IF suites: tokenizer folder with a chat template (default: none)")
    arg("--limit", type=int, default=0, help="IF suites: only the first N prompts")
    arg(
        "--skip-unsupported",
        action="store_true",
        help="IF suites: leave out (and list) prompts whose instruction ids cannot be checked here",
    )
    arg("--max-new-tokens", type=int, default=512, help="IF suites: generation length")
    arg("--batch-size", type=int, default=16, help="sequences generated / pairs scored together")
    arg("--reference", type=local_path_arg, help="pairs suite: reference params or HF folder (default: none)")
    arg("--pairs", type=local_path_arg, help="pairs suite: a `rpo-jax tokenize` folder (default: none)")
    arg("--config", type=local_path_arg, help="pairs suite: run config with the loss settings (default: none)")
    arg("--output", type=local_path_arg, help="write the results as JSON (default: print only)")


def _if_suite(args: argparse.Namespace, scratch: Path) -> dict:
    benchmark = scoring.BENCHMARKS[args.suite]
    input_path = scoring.suite_input(args.suite, args.limit, scratch)
    scoring.refuse_unsupported(input_path, benchmark, args.skip_unsupported)  # before spending time generating
    responses = args.responses
    if not responses:
        if not (args.checkpoint and args.tokenizer):
            raise UserError(
                "rpo-jax eval: generating responses needs --checkpoint and --tokenizer (or pass --responses)"
            )
        from rpo_jax.generation import GenerationSettings, generate_responses

        responses = scratch / "responses.jsonl"
        generate_responses(
            args.checkpoint,
            args.tokenizer,
            input_path,
            responses,
            GenerationSettings(temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        )
    results = scoring.score(input_path, responses, benchmark, skip_unsupported=args.skip_unsupported)
    print(scoring.format_results(results))
    return results


def run(args: argparse.Namespace) -> int:
    if args.suite == "pairs":
        if not (args.checkpoint and args.pairs and args.config):
            raise UserError("rpo-jax eval --suite pairs needs --checkpoint, --pairs and --config")
        from rpo_jax.config_loading import load_config
        from rpo_jax.evaluation import evaluate_pairs

        results = evaluate_pairs(load_config(args.config), args.checkpoint, args.reference, args.pairs, args.batch_size)
        print("\n".join(f"{key:<24}  {value:.4f}" for key, value in sorted(results.items())))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            results = _if_suite(args, Path(scratch))
    if args.output:
        write_json_atomic(args.output, results)
    return 0
