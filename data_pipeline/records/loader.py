"""Grain loader over tokenized pair shards: numpy batches in the trainer's [B, G, L] layout.

Order of operations (all processes build the same global order from the same seed):
  example indices -> shuffle(seed), reshuffled each epoch -> repeat(num_epochs)
  -> last partial *global* batch: dropped ("drop"), kept short ("keep"), or completed with weight-0 copies of the
     epoch's first examples ("fill", for evaluation: every example counted once, every batch the same shape)
  -> read + decode, each record tagged with its *global* batch's padded length
  -> this process's slice [shard_index::shard_count]
  -> batch(batch_size), padded to that length -> optional worker processes (mp_prefetch).
Slicing after shuffle+repeat keeps every process's stream the same length (no process runs out of batches first),
and within an epoch the processes' examples are disjoint and together cover it. The padded length (the smallest
length bucket that fits the global batch's longest row) comes from the shard folder's row lengths, not from the
rows this process read, so every process gives the step the same shapes.

`group_mirrors` (RPO) orders examples by two-example units so a pair and its mirror share a step (`mirrors`).

Batch (numpy): tokens int32 [B,G,L] (right-padded with the manifest's pad id), loss_mask bool [B,G,L] (the final
assistant turn incl. its end-of-turn token; logits at t-1 predict token t), segment_ids int32 [B,G,L] (1 real,
0 pad), positions int32 [B,G,L], margin int32 [B], example_index int64 [B], example_weight float32 [B] (1, or 0 for
the fill rows of `remainder="fill"`: metrics weight by it), and ref_logps float32 [B,G] when the caller passes
per-example reference log-probs ([num_examples, G], row i = example index i; the training library computes and
stores them in its run folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_pipeline.records.batching import CollatePairs, iterate, padded_batches
from data_pipeline.records.mirrors import MirrorUnitOrder, mirror_units
from data_pipeline.records.pair_example import ShardRecords
from data_pipeline.records.shards import read_manifest, read_row_lengths


def dataset_fingerprint(shard_dir: str | Path) -> str:
    """The manifest's fingerprint (sha256 of pair data, tokenizer files, chat template and settings)."""
    return read_manifest(shard_dir)["fingerprint"]


class PairBatchIterator:
    """Iterator of numpy batches with a checkpointable position (`get_state`/`set_state`, JSON-serialisable)."""

    def __init__(self, dataset, manifest: dict, num_batches: int | None):
        self._dataset = dataset
        self._iterator = iter(dataset)
        self.manifest = manifest
        self.num_batches = num_batches  # per process; None when repeating forever

    def __iter__(self) -> PairBatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        # Worker processes hand back shared-memory array subclasses; the trainer gets plain ndarrays.
        return {name: np.asarray(value) for name, value in next(self._iterator).items()}

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state)

    def get_state_bytes(self) -> bytes:
        return json.dumps(self.get_state(), sort_keys=True).encode()

    def set_state_bytes(self, data: bytes) -> None:
        self.set_state(json.loads(data.decode()))

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def make_loader(
    shard_dir: str | Path,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    length_buckets: tuple[int, ...] = (),
    max_length: int | None = None,
    num_workers: int = 0,
    read_threads: int = 4,
    remainder: str = "drop",
    ref_logps: np.ndarray | None = None,
    group_mirrors: bool = False,
) -> PairBatchIterator:
    """Batches of this process's share of the shards; see the module docstring for the order of operations.

    batch_size is per process. `max_length` defaults to the manifest's; rows longer than it raise. `num_workers`
    worker processes decode and collate (0 = in this process). `remainder` (drop | keep | fill) says what happens
    to the last partial global batch of a finite pass; see the module docstring. `ref_logps` ([num_examples, G],
    finite) adds each example's row to its batch as `ref_logps`.
    """
    import grain

    manifest = read_manifest(shard_dir)
    max_length = manifest["max_length"] if max_length is None else max_length
    _check_arguments(
        manifest,
        batch_size,
        shard_index,
        shard_count,
        num_epochs,
        length_buckets,
        max_length,
        num_workers,
        remainder,
        shard_dir,
    )
    if ref_logps is not None:
        ref_logps = _checked_ref_logps(np.asarray(ref_logps), manifest, shard_dir)

    num_examples = manifest["num_examples"]
    records = ShardRecords(shard_dir, manifest)
    if group_mirrors:
        if (batch_size * shard_count) % 2:
            raise ValueError(f"group_mirrors needs an even global batch, got {batch_size} x {shard_count} processes")
        order = MirrorUnitOrder(*mirror_units(manifest, shard_dir), seed=seed, num_epochs=num_epochs)
        ds = grain.MapDataset.source(order)
    else:
        ds = grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(num_epochs)
    num_batches, num_real = None, None
    if num_epochs is not None:
        num_real = total = num_examples * num_epochs
        global_batch = batch_size * shard_count
        short = total % global_batch
        if remainder == "drop" and short:
            total -= short
            ds = ds[:total]
        elif remainder == "fill" and short:
            # Wrap around to the pass's first examples: valid rows (they pass every batch check) that weigh 0.
            fill = global_batch - short
            ds = grain.MapDataset.concatenate([ds[:total]] + [ds[:total]] * (fill // total) + [ds[: fill % total]])
            total += fill
        per_process = len(range(shard_index, total, shard_count))
        num_batches = -(-per_process // batch_size) if remainder == "keep" else per_process // batch_size
        if num_batches == 0:
            raise ValueError(
                f"{shard_dir}: {num_examples} examples x {num_epochs} epochs give no full batch of "
                f"{batch_size} x {shard_count} processes"
            )
    longest_rows = read_row_lengths(shard_dir, manifest).max(axis=1, initial=0) if length_buckets else None
    batches = padded_batches(
        ds,
        records,
        longest_rows,
        num_real=num_real,
        batch_size=batch_size,
        shard_index=shard_index,
        shard_count=shard_count,
        length_buckets=length_buckets,
        max_length=max_length,
        collate=CollatePairs(max_length, manifest["pad_token_id"], ref_logps),
        drop_remainder=remainder != "keep",
    )
    return PairBatchIterator(iterate(batches, read_threads, num_workers), manifest, num_batches)


def _check_arguments(
    manifest,
    batch_size,
    shard_index,
    shard_count,
    num_epochs,
    length_buckets,
    max_length,
    num_workers,
    remainder,
    shard_dir,
) -> None:
    if remainder not in ("drop", "keep", "fill"):
        raise ValueError(f"remainder must be drop, keep or fill, got {remainder!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index} of {shard_count}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (repeat forever), got {num_epochs}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if manifest["max_row_length"] > max_length:
        raise ValueError(
            f"{shard_dir}: rows up to {manifest['max_row_length']} tokens do not fit max_length "
            f"{max_length}; re-tokenize or raise max_length"
        )
    bad = [b for b in length_buckets if not 0 < b <= max_length]
    if bad:
        raise ValueError(f"length_buckets {bad} must lie in (0, max_length={max_length}]")


def _checked_ref_logps(ref_logps: np.ndarray, manifest: dict, shard_dir) -> np.ndarray:
    expected = (manifest["num_examples"], manifest["group_size"])
    if ref_logps.shape != expected:
        raise ValueError(
            f"ref_logps has shape {ref_logps.shape}; {shard_dir} needs {expected} (num_examples, group_size)"
        )
    if not np.all(np.isfinite(ref_logps)):
        raise ValueError(f"ref_logps has {int(np.sum(~np.isfinite(ref_logps)))} non-finite values")
    return ref_logps.astype(np.float32)
