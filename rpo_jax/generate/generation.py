"""Sampling responses for a prompt file with the KV-cache sampler (what `rpo-jax generate` and `eval` run).

Input: JSONL rows with `key` and `prompt` (a user message), `messages` (a chat, list of {role, content}) or
`user_turns` (a conversation answered turn by turn, `prompt_rows`); all go through the tokenizer's chat template
(`raw_prompt` feeds `prompt` as-is). Output: JSONL rows `key`, `prompt`, `sample_id`, `response`, plus
`finish_reason` ("eos", "stop_string" or "length") and `num_tokens` - the format `build-pairs --responses` reads
(`prompt` is the last user message; a conversation's rows add `responses`, the answers to every turn, the last
being `response`), in file order. Written atomically.

Batching: every sample is its own batch row (independent draws). Within each round (turn) the jobs are batched
longest prompt first (`prompt_rows.answer_rounds`) and a batch's prompts are left-padded to a bucket length P
(`prompt_bucket`), so a run compiles one program per bucket instead of one per padded length. The b-th batch in
that order uses key fold_in(seed, b): sampled output is reproducible for a given prompt file, seed and batch size;
greedy output does not depend on which batch or row a prompt lands in (padding does not change a row's result).

`load_for_sampling` loads a checkpoint once; `generate_with_model` runs a prompt file on it (callers that generate
several times, as evaluation over several suites, load once); `generate_responses` does both.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from data_pipeline.errors import UserError
from data_pipeline.files import read_utf8, write_jsonl_atomic
from data_pipeline.storage import storage_path
from rpo_jax.config.schema import MeshConfig
from rpo_jax.generate.prompt_rows import Answer, Job, PromptFileError, answer_rounds, count_jobs, read_prompts


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


def stop_token_ids(tokenizer, tokenizer_dir: Path, model_eos: int) -> tuple[int, ...]:
    """EOS ids from the tokenizer, its generation_config.json (may list several) and the model config."""
    ids = {model_eos}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_file = tokenizer_dir / "generation_config.json"
    if gen_file.is_file():
        eos = json.loads(read_utf8(gen_file)).get("eos_token_id")
        ids.update(int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return tuple(sorted(ids))


FIRST_PROMPT_BUCKET = 64  # the shortest padded prompt length


def prompt_bucket(longest_prompt: int, max_new_tokens: int, max_positions: int) -> int:
    """The padded prompt length P of a batch whose longest prompt has `longest_prompt` tokens: the smallest
    64 * 2^k that holds it, capped at max_positions - max_new_tokens (the longest prompt `_prompt_ids` admits).

    Powers of two: a run compiles at most log2(max_positions / 64) + 1 programs (IFEval's 540 prompts on SmolLM2:
    4, P = 64 to 512) while a batch of sorted prompts pads its longest one by less than 2x; padding costs prefill
    compute and a longer KV cache at every decode step, a compile costs seconds to minutes."""
    bucket = FIRST_PROMPT_BUCKET
    while bucket < longest_prompt:
        bucket *= 2
    return min(bucket, max_positions - max_new_tokens)


def _prompt_ids(tokenizer, job: Job, settings: GenerationSettings, max_positions: int, prompts_path) -> list[int]:
    if settings.raw_prompt:
        ids = tokenizer(job.row.raw_prompt, add_special_tokens=True)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(
            job.row.messages(job.answers), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    if len(ids) + settings.max_new_tokens > max_positions:
        turn = f" (turn {len(job.answers) + 1}, after the model's answers)" if job.answers else ""
        raise PromptFileError(
            f"{prompts_path}:{job.row.line}: field 'prompt'{turn}: {len(ids)} tokens + "
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
    use_lora: bool  # the sampler's: False samples the base weights of a LoRA checkpoint


def load_for_sampling(
    checkpoint: str | Path,
    tokenizer_dir: str | Path,
    mesh_cfg: MeshConfig | None = None,
    use_lora: bool = True,
    raw_prompt: bool = False,
) -> LoadedModel:
    """Loads a params checkpoint or HF folder onto a mesh and its tokenizer (which must have a chat template
    unless `raw_prompt`), for `generate_with_model` and `rpo-jax serve`."""
    from flax import nnx
    from transformers import AutoTokenizer

    from rpo_jax.generate.sampler import Sampler
    from rpo_jax.io.params import load_checkpoint
    from rpo_jax.model.llama import Llama
    from rpo_jax.runtime.compilation_cache import default_cache_dir, enable_compilation_cache
    from rpo_jax.runtime.sharding import make_mesh

    enable_compilation_cache(default_cache_dir())  # the sampler's programs, compiled once across runs
    tokenizer_dir = Path(tokenizer_dir)
    if not storage_path(checkpoint).exists():
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
    return LoadedModel(tokenizer, cfg, sampler, eos_ids, int(pad_id), use_lora)


def generate_responses(
    checkpoint: str,
    tokenizer_dir: str | Path,
    prompts_path: str | Path,
    output_path: str | Path,
    settings: GenerationSettings,
    mesh_cfg: MeshConfig | None = None,
) -> dict:
    """Loads `checkpoint` and samples `settings.num_samples` responses per prompt into `output_path`; returns
    the summary of `generate_with_model`."""
    read_prompts(prompts_path, settings.raw_prompt)  # a bad prompts file is refused before the load
    loaded = load_for_sampling(checkpoint, tokenizer_dir, mesh_cfg, settings.use_lora, settings.raw_prompt)
    return generate_with_model(loaded, prompts_path, output_path, settings)


def generate_with_model(
    loaded: LoadedModel,
    prompts_path: str | Path,
    output_path: str | Path,
    settings: GenerationSettings,
) -> dict:
    """Samples `settings.num_samples` responses per prompt of `prompts_path` from a loaded model and writes them
    to `output_path`; returns a summary (responses, generated tokens, finish reasons, seconds, tokens/s, batches
    per padded prompt length P)."""
    import jax

    from rpo_jax.generate.sampler import SamplingParams, truncate_at_stop

    if settings.use_lora != loaded.use_lora:
        raise ValueError(f"settings.use_lora={settings.use_lora} but the model was loaded with {loaded.use_lora}")
    if not settings.raw_prompt and not getattr(loaded.tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template; pass --raw-prompt to use prompts as-is")
    rows = read_prompts(prompts_path, settings.raw_prompt)
    tokenizer, max_positions, sampler = loaded.tokenizer, loaded.model_config.max_position_embeddings, loaded.sampler
    params = SamplingParams(
        max_new_tokens=settings.max_new_tokens,
        eos_ids=loaded.eos_ids,
        pad_id=loaded.pad_id,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
    )
    # A turn's prompt is the same for every sample of its row: tokenized once, keyed by row and earlier answers.
    token_ids: dict[tuple[int, tuple[str, ...]], list[int]] = {}

    def prompt_ids(job: Job) -> list[int]:
        cache_key = (id(job.row), job.answers)
        if cache_key not in token_ids:
            token_ids[cache_key] = _prompt_ids(tokenizer, job, settings, max_positions, prompts_path)
        return token_ids[cache_key]

    # Every first turn is tokenized (and a prompt too long refused) before generating; later turns as they come.
    for row in rows:
        prompt_ids(Job(row, 0, ()))

    key = jax.random.key(settings.seed)
    counts, started, generated = {"eos": 0, "stop_string": 0, "length": 0}, time.time(), 0
    batches_by_bucket: Counter[int] = Counter()
    bar = tqdm(total=count_jobs(rows, settings.num_samples), desc="generate", unit="seq", dynamic_ncols=True)

    def answer(jobs: list[Job], batch_index: int) -> list[Answer]:
        nonlocal generated
        prompts = [prompt_ids(job) for job in jobs]
        # Fill the last batch to full size with repeats so it reuses the compiled program; extras dropped.
        prompts += [prompts[0]] * (settings.batch_size - len(jobs))
        bucket = prompt_bucket(max(map(len, prompts)), settings.max_new_tokens, max_positions)
        batches_by_bucket[bucket] += 1
        # P is rounded up to a multiple of prompt_length_multiple; every prompt here fits in `bucket`, so P = bucket.
        bucket_params = dataclasses.replace(params, prompt_length_multiple=bucket)
        completions = sampler.generate(prompts, bucket_params, jax.random.fold_in(key, batch_index))[: len(jobs)]
        answers = []
        for completion in completions:
            text, cut = truncate_at_stop(tokenizer.decode(completion.tokens, skip_special_tokens=True), settings.stop)
            reason = "stop_string" if cut else "eos" if completion.stopped else "length"
            counts[reason] += 1
            generated += len(completion.tokens)
            answers.append(Answer(text, reason, len(completion.tokens)))
        bar.set_postfix(tok_s=f"{generated / max(time.time() - started, 1e-9):.0f}", refresh=False)
        bar.update(len(jobs))
        return answers

    rounds = answer_rounds(rows, settings.num_samples, settings.batch_size, answer, lambda job: len(prompt_ids(job)))
    out = [
        {
            "key": job.row.key,
            "prompt": job.row.prompt,
            "sample_id": job.sample_id,
            "response": result.text,
            "finish_reason": result.finish_reason,
            "num_tokens": result.num_tokens,
            **({"responses": [*job.answers, result.text]} if job.row.conversation else {}),
        }
        for job, result in rounds
    ]
    bar.close()
    write_jsonl_atomic(output_path, out)
    seconds = time.time() - started
    return {
        "responses": len(out),
        "sequences": count_jobs(rows, settings.num_samples),
        "generated_tokens": generated,
        "finish_reasons": counts,
        "seconds": seconds,
        "tokens_per_s": generated / max(seconds, 1e-9),
        "batches_by_prompt_length": {str(p): n for p, n in sorted(batches_by_bucket.items())},
    }
