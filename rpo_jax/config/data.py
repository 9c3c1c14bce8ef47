"""The `data` section: where the training pairs come from (one folder or pair file, or a weighted mixture of them),
how they are tokenized and how batches are formed.

Its own module so that schema.py stays within the module size limit; `rpo_jax.config.schema` re-exports it.
"""

from __future__ import annotations

import dataclasses
import math

from rpo_jax.config.rules import PACKING_CHOICES, ConfigError, check_bounds, check_local_path, check_storage_path


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One source of a mixture: a pair JSONL file (tokenized on first use, as `pairs_path`) or a shard folder (as
    `train_path`), and its weight (relative: the weights need not sum to 1)."""

    path: str = ""
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokenized pair shards live, how they are built from pair JSONL, and how batches are formed."""

    train_path: str = ""
    eval_path: str = ""
    # When set, `rpo-jax train` (re)builds train_path / eval_path from these pair files if missing or stale.
    pairs_path: str = ""
    eval_pairs_path: str = ""
    # Instead of train_path / pairs_path: a weighted mixture of pair files and shard folders, mixed by Grain
    # (`data_pipeline.records.mixture`).
    sources: tuple[SourceConfig, ...] = ()
    tokenizer_path: str = ""
    truncation: str = "drop"
    max_length: int = 1024
    global_batch_size: int = 8
    shuffle_seed: int = 0
    num_workers: int = 0
    length_buckets: tuple[int, ...] = ()
    group_mirrors: bool = False
    packing: str = "none"

    def __post_init__(self):
        for name in ("train_path", "eval_path", "pairs_path", "eval_pairs_path"):
            check_storage_path(getattr(self, name), f"data.{name}")
        check_local_path(self.tokenizer_path, "data.tokenizer_path")  # transformers reads local folders
        if (self.pairs_path or self.eval_pairs_path) and not self.tokenizer_path:
            raise ConfigError("data.pairs_path / data.eval_pairs_path need data.tokenizer_path")
        self._check_sources()
        for name, allowed in (("truncation", ("drop", "keep_start", "split")), ("packing", PACKING_CHOICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"data.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_bounds("data", self)
        bad_buckets = [b for b in self.length_buckets if not 1 <= b <= self.max_length]
        if bad_buckets:
            raise ConfigError(
                f"data.length_buckets: {bad_buckets} not in [1, data.max_length={self.max_length}] (a bucket pads "
                "a batch to its length; rows are at most max_length tokens)"
            )

    def _check_sources(self) -> None:
        if self.sources and (self.train_path or self.pairs_path):
            given = "data.train_path" if self.train_path else "data.pairs_path"
            raise ConfigError(
                f"data.sources and {given} are both set: a run trains on one or the other (a mixture's sources "
                f"replace data.train_path / data.pairs_path; list the folder or file as one of data.sources)"
            )
        for k, source in enumerate(self.sources):
            if not source.path:
                raise ConfigError(f"data.sources[{k}].path is empty (a pair JSONL file or a tokenized folder)")
            check_storage_path(source.path, f"data.sources[{k}].path")
            if not (source.weight > 0 and math.isfinite(source.weight)):
                raise ConfigError(f"data.sources[{k}].weight must be > 0 and finite, got {source.weight}")
