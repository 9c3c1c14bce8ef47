"""A run's folder and data: `train.output_dir` proven writable, pair files tokenized into `<output_dir>/data`.

`data.pairs_path` / `data.eval_pairs_path` name pair JSONL files (from `build-pairs`); they are tokenized on
first use (and whenever the pairs, tokenizer, template or truncation settings change) into
`<output_dir>/data/{train,eval}` unless `data.train_path` / `data.eval_path` name shard folders explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import jax

from data_pipeline.errors import UserError
from data_pipeline.records.build import dropped_text
from data_pipeline.records.prepare import ensure_shards
from data_pipeline.records.shards import read_manifest
from data_pipeline.records.truncation import TruncationSettings
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.runtime import distributed
from rpo_jax.train.run_summary import dropped_share_note


def check_output_dir(path: str) -> Path:
    """Creates `train.output_dir` and proves it writable before any data, compile or training work."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{socket.gethostname()}.{os.getpid()}"  # hosts sharing the folder may share pids
        probe.write_bytes(b"rpo-jax")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir={path}: cannot write there ({type(e).__name__}: {e})") from e
    return out


def prepare_run_data(cfg: Config) -> Config:
    """Tokenizes the pair files when needed; returns the config with train/eval shard paths filled in.

    Multi-host: process 0 builds (atomically: a shard folder appears complete or not at all) while the others
    wait for its word, then check that they see the same manifests: `train.output_dir` must be shared.
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
    datasets = (
        ("data.pairs_path", cfg.data.pairs_path, cfg.data.train_path),
        ("data.eval_pairs_path", cfg.data.eval_pairs_path, cfg.data.eval_path),
    )
    jobs = [(setting, pairs, target) for setting, pairs, target in datasets if pairs]
    if jax.process_index() == 0:
        try:
            fingerprints = [_tokenize(cfg, *job) for job in jobs]
        except BaseException as e:
            if jax.process_count() > 1:
                distributed.publish(_PREPARED_KEY, f"error: {type(e).__name__}: {e}")
            raise
        if jax.process_count() > 1:
            distributed.publish(_PREPARED_KEY, " ".join(fingerprints))
        return cfg
    word = distributed.wait_for(_PREPARED_KEY)
    if word.startswith("error: "):
        raise DataPreparationError(f"process 0 could not prepare the run's data ({word[len('error: ') :]})")
    for (_, _, target), fingerprint in zip(jobs, word.split(), strict=True):
        seen = read_manifest(target)["fingerprint"] if (Path(target) / "manifest.json").is_file() else "no manifest"
        if seen != fingerprint:
            raise ConfigError(
                f"{target}: process 0 sees the data it tokenized there (fingerprint {fingerprint}), process "
                f"{jax.process_index()} sees {seen!r}: train.output_dir must be one folder every host shares (NFS)"
            )
    return cfg


_PREPARED_KEY = "prepare_run_data"


class DataPreparationError(UserError):
    """Process 0 failed to tokenize the run's data; the other processes stop with its message."""


def _tokenize(cfg: Config, setting: str, pairs: str, target: str) -> str:
    settings = TruncationSettings(max_length=cfg.data.max_length, mode=cfg.data.truncation)
    manifest, rebuilt = ensure_shards(pairs, cfg.data.tokenizer_path, target, settings, setting=setting)
    if rebuilt:
        counts = manifest["counts"]
        dropped = dropped_text(counts["dropped"])
        print(f"tokenized {pairs} -> {target}: {counts['examples']} examples, dropped {dropped}", flush=True)
    note = dropped_share_note(manifest, pairs, cfg.data.max_length, cfg.data.truncation)
    if note:
        print(note, flush=True)
    return manifest["fingerprint"]
