"""A run's folder and data: `train.output_dir` proven writable, pair files tokenized into `<output_dir>/data`.

`data.pairs_path` / `data.eval_pairs_path` name pair JSONL files (from `build-pairs`); they are tokenized on
first use (and whenever the pairs, tokenizer, template or truncation settings change) into
`<output_dir>/data/{train,eval}` unless `data.train_path` / `data.eval_path` name shard folders explicitly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax

from data_pipeline.records.prepare import ensure_shards
from data_pipeline.records.truncation import TruncationSettings
from rpo_jax import distributed
from rpo_jax.config import Config, ConfigError
from rpo_jax.run_summary import dropped_share_note


def check_output_dir(path: str) -> Path:
    """Creates `train.output_dir` and proves it writable before any data, compile or training work."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"rpo-jax")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir={path}: cannot write there ({type(e).__name__}: {e})") from e
    return out


def prepare_run_data(cfg: Config) -> Config:
    """Tokenizes the pair files when needed; returns the config with train/eval shard paths filled in.

    Multi-host: process 0 builds (atomically) while the others wait at a barrier, then everyone reads.
    """
    if not (cfg.data.pairs_path or cfg.data.eval_pairs_path):
        return cfg
    distributed.maybe_initialize()
    data_dir = Path(cfg.train.output_dir) / "data"
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data,
            train_path=cfg.data.train_path or (str(data_dir / "train") if cfg.data.pairs_path else ""),
            eval_path=cfg.data.eval_path or (str(data_dir / "eval") if cfg.data.eval_pairs_path else ""),
        ),
    )
    settings = TruncationSettings(max_length=cfg.data.max_length, mode=cfg.data.truncation)
    datasets = (
        ("data.pairs_path", cfg.data.pairs_path, cfg.data.train_path),
        ("data.eval_pairs_path", cfg.data.eval_pairs_path, cfg.data.eval_path),
    )
    for setting, pairs, target in datasets:
        if pairs and jax.process_index() == 0:
            manifest, rebuilt = ensure_shards(pairs, cfg.data.tokenizer_path, target, settings, setting=setting)
            if rebuilt:
                counts = manifest["counts"]
                print(
                    f"tokenized {pairs} -> {target}: {counts['examples']} examples, dropped {counts['dropped']}",
                    flush=True,
                )
            note = dropped_share_note(manifest, pairs, cfg.data.max_length, cfg.data.truncation)
            if note:
                print(note, flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("rpo_jax_prepare_data")
    return cfg
