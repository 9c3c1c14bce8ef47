"""A tiny trainer config over the repo's default RPO pairs, written to a temp dir for CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT / "data_pipeline/assets/default_pairs"
TOKENIZER = ROOT / "data_pipeline/assets/tokenizers/llama2-sp-32k"


def write_config(
    tmp: Path,
    *,
    steps: int = 6,
    save_every: int = 2,
    eval_every: int = 0,
    batch: int = 8,
    data_dir: Path | None = None,
    **sections,
) -> Path:
    """A run config (tiny width, 32k vocab for the shipped tokenizer) under `tmp`; returns its path."""
    data_dir = data_dir or tmp / "data"
    raw = {
        "include": [str(ROOT / "configs/base.yaml")],
        "model": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
        },
        "data": {
            "pairs_path": str(DEFAULT_PAIRS / "pairs.jsonl"),
            "eval_pairs_path": str(DEFAULT_PAIRS / "eval_pairs.jsonl"),
            "tokenizer_path": str(TOKENIZER),
            "train_path": str(data_dir / "train"),
            "eval_path": str(data_dir / "eval"),
            "max_length": 256,
            "global_batch_size": batch,
        },
        "loss": {"loss_type": ["rpo"], "loss_weights": [1.0], "logits_chunk_size": 128},
        "optim": {"learning_rate": 2e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"steps": steps, "output_dir": str(tmp / "run"), "eval_every": eval_every},
        "checkpoint": {"save_every": save_every, "keep_last": 10, "async_save": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_env(devices: int = 8, **extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rpo_jax.cli", "train", "--config", str(config), *args]


def run_train(config: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(config, *args), env=env or cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
