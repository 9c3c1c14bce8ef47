"""`rpo-jax bench --compare generate`: generated tokens/s of `rpo-jax generate` and `rpo-jax eval --checkpoint`
against `transformers.generate`, on the same HF model, prompts, batch size and token limit, in one run.

    rpo-jax bench --compare generate --hf-dir HF_FOLDER --num-prompts 64 --decode-batch 32 --max-new-tokens 128

Every side decodes greedily and stops a row at an EOS id (the ids `rpo-jax generate` stops at); tokens/s =
tokens generated before EOS / wall seconds, model loading excluded (reported apart).
- transformers: torch on CPU, fp32, `torch.set_num_threads(CPUs this process may use)`, the prompts in file order
  in batches of `--decode-batch`, left-padded; one untimed warm-up call first.
- generate: `generate_with_model` on the prompt file (what `rpo-jax generate` runs after loading), twice: `cold`
  compiles its programs (JAX's persistent cache is switched off, so this is a first run's cost; the count includes
  small helper programs besides the sampler's one per bucket), `warm` reuses them.
- eval: `run_if_eval` with the generator `rpo-jax eval --checkpoint` builds (generation and IFEval scoring both
  timed), on the same loaded model as generate, as one process doing both would: its first run reuses what
  generate compiled (its compile count shows whether it needed any new program), its second is `warm`.
Ratios compare the warm runs. Greedy rows are compared as text with transformers' (an fp32 near-tie can flip an
argmax, so a few differing rows are not a bug by themselves).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.sampler_bench import DEFAULT_PROMPTS, chat_prompts

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("--compare generate (benchmarks/generate_bench.py)")
    g.add_argument("--hf-dir", default="", help="HF Llama folder with tokenizer and chat template (default: none)")
    g.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="IFEval-format prompts (default: shipped IFEval)")
    g.add_argument("--num-prompts", type=int, default=64, help="the first N prompts of --prompts")
    g.add_argument("--decode-batch", type=int, default=32, help="sequences decoded together, on every side")
    g.add_argument("--max-new-tokens", type=int, default=128, help="most tokens generated per prompt")


@contextlib.contextmanager
def _compiles():
    """{"programs": XLA programs compiled in the block, "seconds": their compile time}."""
    import jax

    counted = {"programs": 0, "seconds": 0.0}

    def note(event: str, duration_secs: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            counted["programs"] += 1
            counted["seconds"] += duration_secs

    jax.monitoring.register_event_duration_secs_listener(note)
    try:
        yield counted
    finally:
        jax.monitoring.unregister_event_duration_listener(note)


def _rate(tokens: int, seconds: float, compiled: dict) -> dict:
    return {
        "seconds": seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "compiled_programs": compiled["programs"],
        "compile_seconds": compiled["seconds"],
    }


def _transformers_side(hf_dir: str, tokenizer, prompts: list[list[int]], eos_ids, pad_id, args) -> dict:
    """Greedy `transformers.generate` over `prompts` in batches; its texts and its rate."""
    import torch
    import transformers

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    load_seconds = time.perf_counter() - started

    def generate(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
        length = max(map(len, batch))
        ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                eos_token_id=list(eos_ids),
                pad_token_id=pad_id,
            )
        # A row ends at its first EOS id; what follows is padding.
        rows = out[:, length:].tolist()
        return [row[: next((i for i, t in enumerate(row) if t in eos_ids), len(row))] for row in rows]

    generate(prompts[:1], 2)  # warm-up: torch's first call pays one-time allocations
    started, tokens = time.perf_counter(), []
    for start in range(0, len(prompts), args.decode_batch):
        tokens += generate(prompts[start : start + args.decode_batch], args.max_new_tokens)
    seconds = time.perf_counter() - started
    generated = sum(map(len, tokens))
    return {
        "load_seconds": load_seconds,
        "seconds": seconds,
        "generated_tokens": generated,
        "tokens_per_s": generated / seconds,
        "torch_threads": threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "texts": [tokenizer.decode(row, skip_special_tokens=True) for row in tokens],
    }


def _jax_sides(args, prompts_file: Path, scratch: Path) -> tuple[dict, dict, list[str], object]:
    """(generate side, eval side, generate's greedy texts in file order, the loaded model) on one load."""
    import json

    import jax

    from data_pipeline.constraints.if_eval import IFEvalSettings, run_if_eval
    from rpo_jax.generate import generation
    from rpo_jax.runtime.compilation_cache import enable_compilation_cache

    started = time.perf_counter()
    loaded = generation.load_for_sampling(args.hf_dir, args.hf_dir)
    load_seconds = time.perf_counter() - started
    enable_compilation_cache("")  # cold means compiling, not reading an earlier run's programs from disk
    settings = generation.GenerationSettings(
        temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.decode_batch
    )
    generate_side: dict = {"load_seconds": load_seconds, "backend": jax.default_backend(), "jax": jax.__version__}
    for run in ("cold", "warm"):
        with _compiles() as compiled:
            started = time.perf_counter()
            summary = generation.generate_with_model(loaded, prompts_file, scratch / f"generate_{run}.jsonl", settings)
            seconds = time.perf_counter() - started  # reading and tokenizing the prompts included, as in eval
        generate_side[run] = _rate(summary["generated_tokens"], seconds, compiled)
        generate_side["batches_by_prompt_length"] = summary["batches_by_prompt_length"]
    texts = [json.loads(line)["response"] for line in (scratch / "generate_warm.jsonl").read_text().splitlines()]

    eval_side: dict = {"load_seconds": "shared with generate"}
    summaries = []  # what each eval run's generation reported

    def generator(prompts, out):
        summaries.append(generation.generate_with_model(loaded, prompts, out, settings))

    for run in ("after_generate", "warm"):
        with _compiles() as compiled:
            started = time.perf_counter()
            results = run_if_eval(IFEvalSettings(prompts=str(prompts_file)), generator)
            seconds = time.perf_counter() - started
        eval_side[run] = _rate(summaries[-1]["generated_tokens"], seconds, compiled)
        eval_side["prompt_level_strict_acc"] = results["prompt_level_strict_acc"]
    return generate_side, eval_side, texts, loaded


def run(args) -> dict:
    from transformers import AutoTokenizer

    from data_pipeline.constraints.scoring import limited_input
    from data_pipeline.errors import UserError

    if not args.hf_dir or not Path(args.hf_dir, "config.json").is_file():
        raise UserError(f"--compare generate needs --hf-dir, an HF Llama folder (got {args.hf_dir!r})")
    if min(args.num_prompts, args.decode_batch, args.max_new_tokens) < 1:
        raise UserError("--num-prompts, --decode-batch and --max-new-tokens must be >= 1")
    tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        prompts_file = limited_input(args.prompts, args.num_prompts, scratch)
        generate_side, eval_side, ours, loaded = _jax_sides(args, prompts_file, scratch)
        prompts = chat_prompts(tokenizer, prompts_file, args.num_prompts)
    # The stop and pad ids `rpo-jax generate` uses (tokenizer, generation_config.json, model config).
    theirs = _transformers_side(args.hf_dir, tokenizer, prompts, set(loaded.eos_ids), loaded.pad_id, args)
    texts = theirs.pop("texts")
    return {
        "model_dir": str(args.hf_dir),
        "prompts_file": str(args.prompts),
        "num_prompts": len(prompts),
        "batch_size": args.decode_batch,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy, each row stops at an EOS id",
        "prompt_lengths": [len(p) for p in prompts],
        "machine": {"cpus_allowed": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "transformers": theirs,
        "rpo_jax_generate": generate_side,
        "rpo_jax_eval": eval_side,
        "speedup_generate_vs_transformers": generate_side["warm"]["tokens_per_s"] / theirs["tokens_per_s"],
        "eval_vs_generate": eval_side["warm"]["tokens_per_s"] / generate_side["warm"]["tokens_per_s"],
        "greedy_rows_matching_transformers": sum(a == b for a, b in zip(ours, texts, strict=True)),
    }


def summary(r: dict) -> str:
    gen, ev, hf = r["rpo_jax_generate"], r["rpo_jax_eval"], r["transformers"]
    lines = [
        f"decoding {r['num_prompts']} prompts, batch {r['batch_size']}, up to {r['max_new_tokens']} new tokens, "
        f"greedy to EOS ({r['machine']['cpus_allowed']} CPUs)",
        f"  transformers.generate {hf['tokens_per_s']:8.1f} tok/s  (load {hf['load_seconds']:.1f} s)",
    ]
    for name, side, first in (("rpo-jax generate", gen, "cold"), ("rpo-jax eval", ev, "after_generate")):
        lines.append(
            f"  {name:21s} {side['warm']['tokens_per_s']:8.1f} tok/s warm, {side[first]['tokens_per_s']:.1f} "
            f"{first} ({side[first]['compiled_programs']} programs compiled, "
            f"{side[first]['compile_seconds']:.1f} s)"
        )
    lines.append(
        f"  generate/transformers {r['speedup_generate_vs_transformers']:.2f}x, eval/generate "
        f"{r['eval_vs_generate']:.2f}; batches per prompt length {gen['batches_by_prompt_length']}; "
        f"greedy rows equal to transformers' {r['greedy_rows_matching_transformers']}/{r['num_prompts']}"
    )
    return "\n".join(lines)
