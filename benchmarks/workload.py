"""What a benchmark runs: the model/run config from CLI flags, a synthetic but realistic batch, machine facts.

The batch is built from pre-tokenized (prompt, responses) examples, so the very same token ids feed our `[B, G, L]`
layout and TRL's `DataCollatorForPreference`. Lengths are drawn per example (prompt 1/8–1/3 of L, responses up to
the rest) and the first example is stretched to exactly L, so both frameworks pad to the same length.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from pathlib import Path

import numpy as np
import yaml

from rpo_jax.config.loading import config_from_dict
from rpo_jax.config.schema import (
    Config,
    ConfigError,
    LoraConfig,
    LossConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

REPO = Path(__file__).resolve().parents[1]
LOSS_TYPES = {"dpo": ("sigmoid", 2), "rpo": ("rpo", 2), "iopo": ("iopo", 4)}
INLINE_DIMS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "vocab": "vocab_size",
}


def resolve_model(spec: str) -> Path:
    """A preset name (`tiny`, `smollm2_135m`) or a YAML path with a `model:` section."""
    path = Path(spec)
    if not path.is_file():
        path = REPO / "configs" / "model" / f"{spec}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))
        raise ConfigError(f"--model {spec!r}: no such file and not a preset (presets: {presets})")
    return path


def model_config(args) -> ModelConfig:
    raw = yaml.safe_load(resolve_model(args.model).read_text()) or {}
    if "model" not in raw:
        raise ConfigError(f"{args.model}: no top-level 'model:' section")
    base = config_from_dict({"model": raw["model"]}).model
    changes = {field: getattr(args, flag) for flag, field in INLINE_DIMS.items() if getattr(args, flag) is not None}
    changes.update(
        dtype=args.dtype,
        param_dtype=args.dtype,
        remat_policy=args.remat,
        max_position_embeddings=max(base.max_position_embeddings, args.seq_len),
    )
    return dataclasses.replace(base, **changes)


def run_config(args, reference_mode: str, total_steps: int) -> Config:
    loss_type, _ = LOSS_TYPES[args.loss]
    lora = LoraConfig(rank=args.lora_rank) if reference_mode == "lora_base" else LoraConfig()
    return Config(
        model=model_config(args),
        lora=lora,
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        loss=LossConfig(
            loss_type=(loss_type,),
            loss_weights=(1.0,),
            logits_chunk_size=args.logits_chunk_size,
            vocab_chunk_size=args.vocab_chunk_size,
        ),
        optim=OptimConfig(learning_rate=1e-6, warmup_ratio=0.0, schedule="constant"),
        train=TrainConfig(steps=total_steps, reference_mode=reference_mode),
    )


def make_examples(B: int, G: int, L: int, vocab: int, seed: int) -> list[dict]:
    """B preference groups as token-id lists: G=2 {prompt, chosen, rejected}; G=4 adds {prompt2} (IOPO)."""
    if L < 16:
        raise ConfigError(f"--seq-len must be >= 16, got {L}")
    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(3, vocab, size=n).tolist()  # noqa: E731  (0-2: pad/bos/eos)
    examples = []
    for b in range(B):
        n_prompts = 2 if G == 4 else 1
        prompts = [int(rng.integers(L // 8, L // 3 + 1)) for _ in range(n_prompts)]
        room = L - max(prompts)
        responses = [int(rng.integers(max(room // 4, 2), room + 1)) for _ in range(2)]
        if b == 0:
            responses[0] = room  # the longest row has exactly L tokens
        ex = {"prompt_ids": ids(prompts[0]), "chosen_ids": ids(responses[0]), "rejected_ids": ids(responses[1])}
        if G == 4:
            ex["prompt2_ids"] = ids(prompts[1])
        examples.append(ex)
    return examples


def group_rows(ex: dict, G: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) per row; IOPO order 0=(x1,y1) 1=(x1,y2) 2=(x2,y2) 3=(x2,y1)."""
    x1, y1, y2 = ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]
    if G == 2:
        return [(x1, y1), (x1, y2)]
    x2 = ex["prompt2_ids"]
    return [(x1, y1), (x1, y2), (x2, y2), (x2, y1)]


def make_batch(examples: list[dict], G: int, L: int, seed: int, with_ref: bool) -> dict:
    """Right-padded `[B, G, L]` batch: scored response tokens in `loss_mask`, segment 1 = real token, 0 = pad."""
    B = len(examples)
    batch = {
        "tokens": np.zeros((B, G, L), np.int32),
        "loss_mask": np.zeros((B, G, L), bool),
        "segment_ids": np.zeros((B, G, L), np.int32),
        "positions": np.zeros((B, G, L), np.int32),
    }
    for b, ex in enumerate(examples):
        for g, (prompt, response) in enumerate(group_rows(ex, G)):
            n = len(prompt) + len(response)
            batch["tokens"][b, g, :n] = prompt + response
            batch["loss_mask"][b, g, len(prompt) : n] = True
            batch["segment_ids"][b, g, :n] = 1
            batch["positions"][b, g, :n] = np.arange(n)
    rng = np.random.default_rng(seed + 1)
    batch["margin"] = rng.integers(0, 5, size=(B,), dtype=np.int32)
    if with_ref:  # the values do not change the cost; realistic magnitudes keep the loss finite
        batch["ref_logps"] = -rng.uniform(1.0, 3.0, size=(B, G)).astype(np.float32) * batch["loss_mask"].sum(-1)
    return batch


def row_lengths(batch: dict) -> np.ndarray:
    return batch["segment_ids"].astype(bool).sum(-1).reshape(-1)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's own RSS high-water mark (`VmHWM`).

    Not `getrusage().ru_maxrss`: Linux carries that across fork and exec, so a process started by a large parent
    reports at least the parent's peak (a TRL subprocess started after our steps read exactly our peak).
    """
    return vm_hwm_bytes(Path("/proc/self/status").read_text())


def vm_hwm_bytes(proc_status: str) -> int:
    """`VmHWM` of a `/proc/<pid>/status` text, in bytes (the kernel writes it in kB)."""
    for line in proc_status.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise RuntimeError(f"/proc status: unexpected VmHWM unit {unit!r}")
            return int(value) * 1024
    raise RuntimeError("/proc status has no VmHWM line (not Linux?)")


def machine() -> dict:
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": model_name,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
