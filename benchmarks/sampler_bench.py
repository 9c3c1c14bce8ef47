"""Decode throughput of our KV-cache sampler vs `transformers.generate` (torch) on the same model and prompts.

Both decode greedily for exactly `--max-new-tokens` tokens (EOS ignored) from the same chat-templated IFEval
prompts, batched with left padding. Each side is timed at N new tokens and at 1 new token after a warm-up
(compile for JAX); the decode rate is B·(N-1) / (median t_N - median t_1), so prefill is excluded.
Also records whether the two sides produced the same greedy tokens.

    python benchmarks/sampler_bench.py --hf-dir HF_FOLDER --output sampler_bench.json

HF_FOLDER is an HF Llama folder with tokenizer, e.g. from `rpo-jax import-gguf --hf-output`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "data_pipeline/assets/ifeval/filtered_input_data.jsonl"
NEVER = -1  # an EOS id no token equals, so every row decodes the full length


def chat_prompts(tokenizer, path: Path, n: int) -> list[list[int]]:
    rows = [json.loads(line) for _, line in zip(range(n), open(path))]
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for r in rows
    ]


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (compilation for JAX)
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_ours(hf_dir: Path, prompts, n_new: int, repeats: int, pad_id: int):
    import jax
    from flax import nnx

    from rpo_jax.config.schema import MeshConfig
    from rpo_jax.generate.sampler import Sampler, SamplingParams
    from rpo_jax.io.hf import load_hf_state
    from rpo_jax.model.llama import Llama
    from rpo_jax.runtime.sharding import make_mesh

    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    cfg, state = load_hf_state(hf_dir, mesh)
    sampler = Sampler(nnx.merge(nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))[0], state), mesh)

    def run(n):
        params = SamplingParams(max_new_tokens=n, eos_ids=(NEVER,), pad_id=pad_id, temperature=0.0)
        return lambda: [c.tokens for c in sampler.generate(prompts, params, jax.random.key(0))]

    t_full, tokens = timed(run(n_new), repeats)
    t_one, _ = timed(run(1), repeats)
    return t_full, t_one, tokens, {"jax": jax.__version__, "backend": jax.default_backend()}


def bench_transformers(hf_dir: Path, tokenizer, prompts, n_new: int, repeats: int, threads: int):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    # No EOS at all (rather than min_new_tokens, which masks EOS and so changes the greedy path).
    model.generation_config.eos_token_id = None
    length = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])

    def run(n):
        def go():
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    max_new_tokens=n,
                    pad_token_id=tokenizer.pad_token_id,
                )
            return out[:, length:].tolist()

        return go

    t_full, tokens = timed(run(n_new), repeats)
    t_one, _ = timed(run(1), repeats)
    return (
        t_full,
        t_one,
        tokens,
        {"torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": threads},
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-dir", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="default: the CPUs this process may run on (restrict both sides with taskset)",
    )
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be >= 2 (decode rate is measured between 1 and N tokens)")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.hf_dir))
    prompts = chat_prompts(tokenizer, args.prompts, args.batch_size)
    B, N = len(prompts), args.max_new_tokens
    results = {}
    for name, bench in (
        ("rpo_jax", lambda: bench_ours(args.hf_dir, prompts, N, args.repeats, tokenizer.pad_token_id)),
        (
            "transformers",
            lambda: bench_transformers(args.hf_dir, tokenizer, prompts, N, args.repeats, args.torch_threads),
        ),
    ):
        t_full, t_one, tokens, versions = bench()
        results[name] = {
            "seconds_n_tokens": t_full,
            "seconds_1_token": t_one,
            "decode_tokens_per_s": B * (N - 1) / (t_full - t_one),
            "end_to_end_tokens_per_s": B * N / t_full,
            "versions": versions,
            "tokens": tokens,
        }
        print(
            f"{name}: {results[name]['decode_tokens_per_s']:.1f} decode tok/s, "
            f"{results[name]['end_to_end_tokens_per_s']:.1f} end-to-end tok/s",
            flush=True,
        )
    ours, theirs = results["rpo_jax"].pop("tokens"), results["transformers"].pop("tokens")
    same = [a == b for a, b in zip(ours, theirs)]
    # Where greedy paths part (an fp32 near-tie can flip an argmax after some steps): index of first difference.
    divergence = {
        row: next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        for row, (a, b) in enumerate(zip(ours, theirs))
        if a != b
    }
    report = {
        "model_dir": str(args.hf_dir),
        "batch_size": B,
        "prompt_lengths": [len(p) for p in prompts],
        "max_new_tokens": N,
        "repeats": args.repeats,
        "decoding": "greedy, EOS ignored",
        "rows_with_identical_greedy_tokens": sum(same),
        "first_differing_token_by_row": divergence,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_allowed": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(),
        },
        "results": results,
        "speedup_decode": results["rpo_jax"]["decode_tokens_per_s"] / results["transformers"]["decode_tokens_per_s"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.output.name}.", dir=args.output.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, args.output)
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
