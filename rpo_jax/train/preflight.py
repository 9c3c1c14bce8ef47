"""Checks of a training run that need more than the config itself (files, devices, the model's layout), run
before any tokenizing, compiling or training, so a mistake costs seconds and says which setting to fix.

The config's own values were checked when it was read (rpo_jax.config.schema, rpo_jax.config.rules).
"""

from __future__ import annotations

from data_pipeline.records.shards import is_shard_folder
from data_pipeline.storage import storage_path
from rpo_jax.config.loading import path_rule
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.runtime import distributed
from rpo_jax.runtime.sharding import make_mesh
from rpo_jax.train.batches import per_process_batch_size
from rpo_jax.train.policy import policy_layout
from rpo_jax.train.trackers import require_trackers


def _require(setting: str, path: str, kind: str) -> None:
    exists = storage_path(path).is_file() if kind == "file" else storage_path(path).is_dir()
    if path and not exists:
        raise ConfigError(f"{setting}={path}: no such {kind} ({path_rule()})")


def _require_shards(setting: str, path: str) -> None:
    if not is_shard_folder(path):
        raise ConfigError(
            f"{setting}={path}: no manifest.json or dataset_info.json, so neither a folder written by `rpo-jax "
            f"tokenize` nor a TFDS folder ({path_rule()})"
        )


def _require_source(setting: str, path: str, tokenizer_path: str) -> None:
    """A mixture source is a pair file (tokenized on first use, so it needs the tokenizer) or a shard folder."""
    if storage_path(path).is_file():
        if not tokenizer_path:
            raise ConfigError(f"{setting}={path} is a pair file: tokenizing it needs data.tokenizer_path")
    elif not is_shard_folder(path):
        raise ConfigError(
            f"{setting}={path}: neither a pair JSONL file nor a folder written by `rpo-jax tokenize` (or a TFDS "
            f"folder) ({path_rule()})"
        )


def refuse_precomputed_mixture(cfg: Config) -> None:
    """The reference pre-pass stores one array per shard folder (`precompute`); a mixture is several folders."""
    if cfg.data.sources and cfg.train.reference_mode == "precomputed":
        raise ConfigError(
            "train.reference_mode=precomputed (and `rpo-jax precompute-ref`) does not read a mixture (data.sources) "
            "yet: use train.reference_mode=separate or lora_base, or train on one source"
        )


def check_run_inputs(cfg: Config) -> None:
    """Raises ConfigError naming the setting (or a setting-specific error) for the first problem found."""
    distributed.maybe_initialize()
    data = cfg.data
    if data.max_length > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.max_length={data.max_length} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}: rows would use positions the model was not built for"
        )
    _require("data.pairs_path", data.pairs_path, "file")
    _require("data.eval_pairs_path", data.eval_pairs_path, "file")
    _require("data.tokenizer_path", data.tokenizer_path, "folder")
    _require("train.init_checkpoint", cfg.train.init_checkpoint, "folder")
    for k, source in enumerate(data.sources):
        _require_source(f"data.sources[{k}].path", source.path, data.tokenizer_path)
    refuse_precomputed_mixture(cfg)
    if not data.pairs_path and not data.sources:
        if not data.train_path:
            raise ConfigError(
                "data.pairs_path and data.train_path are both empty: set data.pairs_path to a pair JSONL file "
                "(`rpo-jax build-pairs`), data.train_path to a folder written by `rpo-jax tokenize`, or "
                "data.sources to a weighted mixture of them"
            )
        _require_shards("data.train_path", data.train_path)
    if data.eval_path and not data.eval_pairs_path:
        _require_shards("data.eval_path", data.eval_path)
    if cfg.train.eval_every and not (data.eval_path or data.eval_pairs_path):
        raise ConfigError(
            f"train.eval_every={cfg.train.eval_every} needs held-out pairs: set data.eval_pairs_path (or "
            "data.eval_path), or train.eval_every=0"
        )
    require_trackers(cfg.train.trackers)
    mesh = make_mesh(cfg.mesh)
    per_process_batch_size(cfg, mesh)
    policy_layout(cfg, mesh)  # reference mode vs LoRA and losses, remat policy, sharding rules: shapes only
