"""Sampling responses for a prompt file with the KV-cache sampler (what `rpo-jax generate` and `eval` run).

Input: JSONL rows with `key` and either `prompt` (a user message) or `messages` (a chat, list of
{role, content}); both go through the tokenizer's chat template (`raw_prompt` feeds `prompt` as-is).
Output: JSONL rows `key`, `prompt`, `sample_id`, `response`, plus `finish_reason` ("eos", "stop_string" or
"length") and `num_tokens` - the format `build-pairs --responses` reads (for `messages` rows, `prompt` is the
last user message). Every sample is its own batch row (independent draws); batch b uses key
fold_in(seed, b), so the output is reproducible for a given seed and batch size. Written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from tqdm import tqdm

from data_pipeline.errors import UserError, malformed_json
from data_pipeline.files import write_jsonl_atomic
from rpo_jax.config.schema import MeshConfig


class PromptFileError(UserError, ValueError):
    """A prompts file row is malformed (the message names file, line and field)."""


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    num_samples: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 32
    stop: tuple[str, ...] = ()  # stop strings, cut on the host
    raw_prompt: bool = False  # tokenize `prompt` without the chat template
    use_lora: bool = True  # False: sample from the base weights of a LoRA checkpoint

    def __post_init__(self):
        if self.num_samples < 1 or self.batch_size < 1:
            raise UserError("--num-samples and --batch-size must be >= 1")


def read_prompts(path: str | Path, raw: bool) -> list[dict]:
    if not Path(path).is_file():
        raise PromptFileError(f"{path}: no such prompts file (--prompts)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                raise PromptFileError(f"{path}:{line_no}: empty line")
            try:
                obj = json.loads(line.rstrip("\r\n"))  # a row cut short breaks at its end, not on "line 2"
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{line_no}: {malformed_json(e)}") from e
            if not isinstance(obj, dict) or "key" not in obj:
                raise PromptFileError(f"{path}:{line_no}: field 'key': missing")
            rows.append({"key": obj["key"], **_messages(obj, raw, path, line_no), "line": line_no})
    if not rows:
        raise PromptFileError(f"{path}: no prompts")
    return rows


def _messages(obj: dict, raw: bool, path, line_no: int) -> dict:
    if isinstance(obj.get("prompt"), str):
        messages = [{"role": "user", "content": obj["prompt"]}]
    elif "messages" in obj and not raw:
        messages = obj["messages"]
        if not (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise PromptFileError(
                f"{path}:{line_no}: field 'messages': must be a non-empty list of {{role, content}} strings"
            )
    else:
        raise PromptFileError(
            f"{path}:{line_no}: field 'prompt': missing or not a string" + ("" if raw else " (and no 'messages')")
        )
    user = [m["content"] for m in messages if m["role"] == "user"]
    return {"prompt": obj.get("prompt", user[-1] if user else ""), "messages": messages}


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


def _prompt_ids(tokenizer, row: dict, settings: GenerationSettings, max_positions: int, prompts_path) -> list[int]:
    if settings.raw_prompt:
        ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(
            row["messages"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    if len(ids) + settings.max_new_tokens > max_positions:
        raise PromptFileError(
            f"{prompts_path}:{row['line']}: field 'prompt': {len(ids)} tokens + "
            f"--max-new-tokens {settings.max_new_tokens} exceed the model's "
            f"max_position_embeddings {max_positions}"
        )
    return list(ids)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to sample from, with its tokenizer and stop ids."""

    tokenizer: object
    model_config: object  # rpo_jax.config.schema.ModelConfig
    sampler: object  # rpo_jax.generate.sampler.Sampler
    eos_ids: tuple[int, ...]
    pad_id: int


def load_for_sampling(
    checkpoint: str | Path,
    tokenizer_dir: str | Path,
    mesh_cfg: MeshConfig | None = None,
    use_lora: bool = True,
    raw_prompt: bool = False,
) -> LoadedModel:
    """Loads a params checkpoint or HF folder onto a mesh and its tokenizer (which must have a chat template
    unless `raw_prompt`), for `generate_responses` and `rpo-jax serve`."""
    from flax import nnx
    from transformers import AutoTokenizer

    from rpo_jax.generate.sampler import Sampler
    from rpo_jax.io.params import load_checkpoint
    from rpo_jax.model.llama import Llama
    from rpo_jax.runtime.sharding import make_mesh

    tokenizer_dir = Path(tokenizer_dir)
    if not Path(checkpoint).exists():
        raise UserError(f"{checkpoint}: no such checkpoint or HF folder (--checkpoint / --model)")
    if not tokenizer_dir.is_dir():
        raise UserError(f"{tokenizer_dir}: no such tokenizer folder (--tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if not raw_prompt and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{tokenizer_dir}: tokenizer has no chat template; pass --raw-prompt to use prompts as-is")
    mesh = make_mesh(mesh_cfg or MeshConfig())
    cfg, lora, state = load_checkpoint(checkpoint, mesh)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, lora, rngs=nnx.Rngs(0))))
    sampler = Sampler(nnx.merge(graphdef, state), mesh, use_lora=use_lora)
    eos_ids = stop_token_ids(tokenizer, tokenizer_dir, cfg.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    return LoadedModel(tokenizer, cfg, sampler, eos_ids, int(pad_id))


def generate_responses(
    checkpoint: str,
    tokenizer_dir: str | Path,
    prompts_path: str | Path,
    output_path: str | Path,
    settings: GenerationSettings,
    mesh_cfg: MeshConfig | None = None,
) -> dict:
    """Samples `settings.num_samples` responses per prompt and writes them to `output_path`; returns a summary
    (responses, generated tokens, finish reasons, seconds, tokens/s)."""
    import jax

    from rpo_jax.generate.sampler import SamplingParams, truncate_at_stop

    rows = read_prompts(prompts_path, settings.raw_prompt)
    loaded = load_for_sampling(checkpoint, tokenizer_dir, mesh_cfg, settings.use_lora, settings.raw_prompt)
    tokenizer, cfg, sampler = loaded.tokenizer, loaded.model_config, loaded.sampler
    params = SamplingParams(
        max_new_tokens=settings.max_new_tokens,
        eos_ids=loaded.eos_ids,
        pad_id=loaded.pad_id,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
    )
    jobs = [
        (row, s, _prompt_ids(tokenizer, row, settings, cfg.max_position_embeddings, prompts_path))
        for row in rows
        for s in range(settings.num_samples)
    ]

    key = jax.random.key(settings.seed)
    out, counts, started, generated = [], {"eos": 0, "stop_string": 0, "length": 0}, time.time(), 0
    bar = tqdm(total=len(jobs), desc="generate", unit="seq", dynamic_ncols=True)  # ETA from tqdm
    for b, start in enumerate(range(0, len(jobs), settings.batch_size)):
        batch = jobs[start : start + settings.batch_size]
        # Fill the last batch to full size with repeats so it reuses the compiled program; extras dropped.
        prompts = [ids for _, _, ids in batch] + [batch[0][2]] * (settings.batch_size - len(batch))
        completions = sampler.generate(prompts, params, jax.random.fold_in(key, b))[: len(batch)]
        for (row, sample_id, _), completion in zip(batch, completions):
            text, cut = truncate_at_stop(tokenizer.decode(completion.tokens, skip_special_tokens=True), settings.stop)
            reason = "stop_string" if cut else "eos" if completion.stopped else "length"
            counts[reason] += 1
            generated += len(completion.tokens)
            out.append(
                {
                    "key": row["key"],
                    "prompt": row["prompt"],
                    "sample_id": sample_id,
                    "response": text,
                    "finish_reason": reason,
                    "num_tokens": len(completion.tokens),
                }
            )
        bar.set_postfix(tok_s=f"{generated / max(time.time() - started, 1e-9):.0f}", refresh=False)
        bar.update(len(batch))
    bar.close()
    write_jsonl_atomic(output_path, out)
    seconds = time.time() - started
    return {
        "responses": len(out),
        "generated_tokens": generated,
        "finish_reasons": counts,
        "seconds": seconds,
        "tokens_per_s": generated / max(seconds, 1e-9),
    }
