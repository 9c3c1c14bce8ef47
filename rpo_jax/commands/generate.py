"""`rpo-jax generate`: sample N responses per prompt from a params checkpoint or an HF Llama folder (e.g. a
trained run's `hf/`) with the KV-cache sampler.

Input: JSONL rows with `key` and either `prompt` (a user message) or `messages` (a chat, list of
{role, content}); both go through the tokenizer's chat template (`--raw-prompt` feeds `prompt` as-is).
Output: JSONL rows `key`, `prompt`, `sample_id`, `response`, plus `finish_reason` ("eos", "stop_string" or
"length") and `num_tokens` — the format `build-pairs --responses` reads (for `messages` rows, `prompt` is the
last user message). Every sample is its own batch row (independent draws); batch b uses key
fold_in(seed, b), so the output is reproducible for a given --seed and --batch-size. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from data_pipeline.local_paths import local_path_arg
from rpo_jax.commands.import_hf import parse_mesh
from rpo_jax.config import MeshConfig


class PromptFileError(ValueError):
    """A prompts file row is malformed (the message names file, line and field)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=local_path_arg,
                        help="params checkpoint (import-hf / import-gguf) or HF Llama folder (e.g. a run's hf/)")
    parser.add_argument("--tokenizer", required=True, type=local_path_arg,
                        help="HF tokenizer folder (with its chat template)")
    parser.add_argument("--prompts", required=True, type=local_path_arg,
                        help="JSONL with `key` and `prompt` or `messages`")
    parser.add_argument("--output", required=True, type=local_path_arg, help="responses JSONL to write")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable), cut on the host")
    parser.add_argument("--raw-prompt", action="store_true", help="tokenize `prompt` without the chat template")
    parser.add_argument("--no-lora", action="store_true", help="sample from the base weights of a LoRA checkpoint")
    parser.add_argument("--mesh", type=parse_mesh, default=MeshConfig(),
                        help="device mesh, e.g. data=1,fsdp=-1,tensor=1 (the default)")


def read_prompts(path: str, raw: bool) -> list[dict]:
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                raise PromptFileError(f"{path}:{line_no}: empty line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{line_no}: invalid JSON: {e.msg}") from e
            if not isinstance(obj, dict) or "key" not in obj:
                raise PromptFileError(f"{path}:{line_no}: field 'key': missing")
            if isinstance(obj.get("prompt"), str):
                messages = [{"role": "user", "content": obj["prompt"]}]
            elif "messages" in obj and not raw:
                messages = obj["messages"]
                if not (isinstance(messages, list) and messages and all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in messages)):
                    raise PromptFileError(f"{path}:{line_no}: field 'messages': must be a non-empty list of "
                                          f"{{role, content}} strings")
            else:
                raise PromptFileError(f"{path}:{line_no}: field 'prompt': missing or not a string"
                                      + ("" if raw else " (and no 'messages')"))
            user = [m["content"] for m in messages if m["role"] == "user"]
            rows.append({"key": obj["key"], "prompt": obj.get("prompt", user[-1] if user else ""),
                         "messages": messages, "line": line_no})
    if not rows:
        raise PromptFileError(f"{path}: no prompts")
    return rows


def stop_token_ids(tokenizer, tokenizer_dir: Path, model_eos: int) -> tuple[int, ...]:
    """EOS ids from the tokenizer, its generation_config.json (may list several) and the model config."""
    ids = {model_eos}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_file = tokenizer_dir / "generation_config.json"
    if gen_file.is_file():
        eos = json.loads(gen_file.read_text()).get("eos_token_id")
        ids.update(int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return tuple(sorted(ids))


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import jax
    from flax import nnx
    from transformers import AutoTokenizer

    from rpo_jax.model import Llama
    from rpo_jax.params_io import load_checkpoint
    from rpo_jax.sampler import Sampler, SamplingParams, truncate_at_stop
    from rpo_jax.sharding import make_mesh

    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--num-samples and --batch-size must be >= 1")
    rows = read_prompts(args.prompts, args.raw_prompt)
    tokenizer_dir = Path(args.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if not args.raw_prompt and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{tokenizer_dir}: tokenizer has no chat template; pass --raw-prompt to use prompts as-is")

    mesh = make_mesh(args.mesh)
    cfg, lora, state = load_checkpoint(args.checkpoint, mesh)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, lora, rngs=nnx.Rngs(0))))
    sampler = Sampler(nnx.merge(graphdef, state), mesh, use_lora=not args.no_lora)
    eos_ids = stop_token_ids(tokenizer, tokenizer_dir, cfg.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, eos_ids=eos_ids, pad_id=int(pad_id),
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    jobs = []  # (row, sample_id, prompt token ids)
    for row in rows:
        if args.raw_prompt:
            ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        if len(ids) + args.max_new_tokens > cfg.max_position_embeddings:
            raise PromptFileError(f"{args.prompts}:{row['line']}: field 'prompt': {len(ids)} tokens + "
                                  f"--max-new-tokens {args.max_new_tokens} exceed the model's "
                                  f"max_position_embeddings {cfg.max_position_embeddings}")
        jobs += [(row, s, list(ids)) for s in range(args.num_samples)]

    key = jax.random.key(args.seed)
    lines, counts, started, generated = [], {"eos": 0, "stop_string": 0, "length": 0}, time.time(), 0
    for b, start in enumerate(range(0, len(jobs), args.batch_size)):
        batch = jobs[start:start + args.batch_size]
        # Fill the last batch to full size with repeats so it reuses the compiled program; extras dropped.
        prompts = [ids for _, _, ids in batch] + [batch[0][2]] * (args.batch_size - len(batch))
        completions = sampler.generate(prompts, params, jax.random.fold_in(key, b))[:len(batch)]
        for (row, sample_id, _), completion in zip(batch, completions):
            text = tokenizer.decode(completion.tokens, skip_special_tokens=True)
            text, cut = truncate_at_stop(text, args.stop)
            reason = "stop_string" if cut else "eos" if completion.stopped else "length"
            counts[reason] += 1
            generated += len(completion.tokens)
            lines.append(json.dumps({"key": row["key"], "prompt": row["prompt"], "sample_id": sample_id,
                                     "response": text, "finish_reason": reason,
                                     "num_tokens": len(completion.tokens)}, ensure_ascii=False))
        print(f"{start + len(batch)}/{len(jobs)} sequences, {generated} tokens, {time.time() - started:.0f}s",
              flush=True)
    _atomic_write_lines(Path(args.output), lines)
    print(f"wrote {len(lines)} responses to {args.output}; finish reasons {counts}")
    return 0
