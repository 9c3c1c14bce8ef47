"""A run's folder and data: `train.output_dir` proven writable, pair files tokenized into `<output_dir>/data`.

`data.pairs_path` / `data.eval_pairs_path` name pair JSONL files (from `build-pairs`); they are tokenized on
first use (and whenever the pairs, tokenizer, template or truncation settings change) into
`<output_dir>/data/{train,eval}` unless `data.train_path` / `data.eval_path` name shard folders explicitly. The pair
files among `data.sources` (a mixture) are tokenized the same way, into `<output_dir>/data/sources/<k>`.

With `train.output_dir` in a bucket (gs://), the tokenized data stays on each host's own disk
(`data_pipeline.storage.local_cache_dir`): every host tokenizes the same pairs with the same tokenizer, and the
fingerprints of what they built are compared through JAX's coordination service. Grain reads ArrayRecord shards
record by record at random offsets, which local disk serves in microseconds and an object store in tens of
milliseconds per request; tokenizing takes seconds to minutes, far less than a run. Pair files and shard folders
named by gs:// URLs are copied to the same local cache first.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import jax

from data_pipeline.errors import UserError
from data_pipeline.records.build import dropped_text
from data_pipeline.records.mixture import MixtureSourceError
from data_pipeline.records.prepare import ensure_shards
from data_pipeline.records.shards import read_manifest
from data_pipeline.records.truncation import TruncationSettings
from data_pipeline.storage import is_bucket_path, local_cache_dir, local_copy, storage_path
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.runtime import distributed
from rpo_jax.train.run_summary import dropped_share_note


def check_output_dir(path: str):
    """Creates `train.output_dir` and proves it writable before any data, compile or training work (a Path, or an
    epath.Path for gs://: a bucket has no folders to create, the probe object proves the bucket writable)."""
    out = storage_path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{socket.gethostname()}.{os.getpid()}"  # hosts sharing the folder may share pids
        probe.write_bytes(b"rpo-jax")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - OSError locally; gcsfs / google.auth raise their own types
        raise ConfigError(f"train.output_dir={path}: cannot write there ({type(e).__name__}: {e})") from e
    return out


def prepare_run_data(cfg: Config) -> Config:
    """Tokenizes the pair files when needed; returns the config with train/eval shard paths filled in.

    Multi-host: process 0 builds (atomically: a shard folder appears complete or not at all) while the others
    wait for its word, then check that they see the same manifests: `train.output_dir` must be shared.
    """
    cfg = localize_shard_paths(cfg)
    pair_sources = [k for k, source in enumerate(cfg.data.sources) if Path(source.path).is_file()]
    if not (cfg.data.pairs_path or cfg.data.eval_pairs_path or pair_sources):
        return cfg
    distributed.maybe_initialize()
    per_host = is_bucket_path(cfg.train.output_dir)
    data_dir = run_data_dir(cfg.train.output_dir)
    # A mixture's pair files are tokenized into <data>/sources/<k>, and the run reads the folders from then on.
    source_jobs = [
        (f"data.sources[{k}].path", cfg.data.sources[k].path, str(data_dir / "sources" / str(k))) for k in pair_sources
    ]
    sources = list(cfg.data.sources)
    for k, (_, _, target) in zip(pair_sources, source_jobs):
        sources[k] = dataclasses.replace(sources[k], path=target)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data,
            train_path=cfg.data.train_path or (str(data_dir / "train") if cfg.data.pairs_path else ""),
            eval_path=cfg.data.eval_path or (str(data_dir / "eval") if cfg.data.eval_pairs_path else ""),
            pairs_path=local_copy(cfg.data.pairs_path, "pairs"),
            eval_pairs_path=local_copy(cfg.data.eval_pairs_path, "pairs"),
            sources=tuple(sources),
        ),
    )
    datasets = (
        ("data.pairs_path", cfg.data.pairs_path, cfg.data.train_path),
        ("data.eval_pairs_path", cfg.data.eval_pairs_path, cfg.data.eval_path),
        *source_jobs,
    )
    jobs = [(setting, pairs, target) for setting, pairs, target in datasets if pairs]
    if per_host and jax.process_index() != 0:  # tokenized here too, then compared with process 0 below
        [_tokenize(cfg, *job) for job in jobs]
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
                f"{jax.process_index()} sees {seen!r}: "
                + (
                    "the hosts tokenized different bytes (are the pair file and tokenizer the same on every host?)"
                    if per_host
                    else "train.output_dir must be one folder every host shares (NFS or a gs:// bucket)"
                )
            )
    return cfg


def run_data_dir(output_dir: str) -> Path:
    """Where a run's pair files are tokenized: `<output_dir>/data`, or for a bucket this host's own cache for
    that run (one per process: processes sharing a host must not build into one folder at once)."""
    if not is_bucket_path(output_dir):
        return Path(output_dir) / "data"
    return local_cache_dir("tokenized", f"{output_dir.rstrip('/')}#process{jax.process_index()}")


def localize_shard_paths(cfg: Config) -> Config:
    """`data.train_path` / `data.eval_path` / `data.sources` in a bucket, copied to this host's disk (Grain reads
    local shards)."""
    data = cfg.data
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            data,
            train_path=local_copy(data.train_path, "shards"),
            eval_path=local_copy(data.eval_path, "shards"),
            sources=tuple(dataclasses.replace(s, path=local_copy(s.path, "sources")) for s in data.sources),
        ),
    )


_PREPARED_KEY = "prepare_run_data"


class DataPreparationError(UserError):
    """Process 0 failed to tokenize the run's data; the other processes stop with its message."""


def _tokenize(cfg: Config, setting: str, pairs: str, target: str) -> str:
    settings = TruncationSettings(max_length=cfg.data.max_length, mode=cfg.data.truncation)
    try:
        manifest, rebuilt = ensure_shards(pairs, cfg.data.tokenizer_path, target, settings, setting=setting)
    except UserError as err:
        if not setting.startswith("data.sources"):
            raise
        raise MixtureSourceError(f"{setting}: {err}") from err  # which source of the mixture, then file and row
    if rebuilt:
        counts = manifest["counts"]
        dropped = dropped_text(counts["dropped"])
        print(f"tokenized {pairs} -> {target}: {counts['examples']} examples, dropped {dropped}", flush=True)
    note = dropped_share_note(manifest, pairs, cfg.data.max_length, cfg.data.truncation)
    if note:
        print(note, flush=True)
    return manifest["fingerprint"]
