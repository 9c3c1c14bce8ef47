"""Grain loader of packed rows (`data.packing = packed | packed_shared_prompt`): a token budget per batch.

Order of operations (every process builds the same plan and order):
  read each example's packed length once -> units (an example, or an RPO pair with its mirror when
  `group_mirrors`) -> first-fit-decreasing plan of rows of `max_length` tokens (`packing`) -> shuffle of the rows
  (seed), reshuffled each epoch -> repeat(num_epochs) -> the last partial global batch of a finite pass dropped
  -> this process's rows [shard_index::shard_count] -> decode + lay out -> batch(rows_per_batch).
The plan is fixed (the same rows every epoch, in a new order); the iterator state is Grain's, so a resumed run
continues exactly. The number of examples per batch varies; the batch has `slots` example slots per row (the most
any planned row holds), empty ones with weight 0, so every batch has the same shapes.

Batch (numpy), R = rows_per_batch, J = slots, G = group size: tokens, loss_mask, segment_ids, positions,
sequence_ids, and prefix_ids (shared prompts only) [R, L] (see `packing`); margin [R, J] int32, example_index
[R, J] int64 (-1 empty), example_weight [R, J] float32, scored_tokens [R, J, G] int32, and ref_logps [R, J, G]
float32 (0 in empty slots) when `ref_logps` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipeline.records.batching import iterate
from data_pipeline.records.loader import PairBatchIterator, _checked_ref_logps
from data_pipeline.records.packing import layout_row, packed_length, packed_row_length, packing_efficiency, plan_rows
from data_pipeline.records.pair_example import ShardRecords
from data_pipeline.records.shards import read_manifest


class ReadPackedRow:
    """A planned row (example indices) -> its decoded records, weight 1 (picklable: runs in Grain workers)."""

    def __init__(self, records: ShardRecords):
        self.records = records

    def __call__(self, example_indices: Sequence[int]) -> list[dict]:
        records = [self.records[int(i)] for i in example_indices]
        for record in records:
            record["weight"] = 1.0
        return records


class CollatePackedRows:
    """Lays out and stacks rows into one batch (picklable: runs inside Grain worker processes)."""

    def __init__(self, capacity: int, slots: int, pad_token_id: int, shared_prompt: bool, ref_logps):
        self.capacity, self.slots, self.pad_token_id = capacity, slots, pad_token_id
        self.shared_prompt, self.ref_logps = shared_prompt, ref_logps

    def __call__(self, rows: Sequence[list[dict]]) -> dict[str, np.ndarray]:
        laid = [layout_row(r, self.capacity, self.slots, self.pad_token_id, self.shared_prompt) for r in rows]
        out = {name: np.stack([row[name] for row in laid]) for name in laid[0]}
        if not self.shared_prompt:  # prefix == segment: the batch says "no shared prompts" by leaving it out
            del out["prefix_ids"]
        if self.ref_logps is not None:
            index = out["example_index"]
            out["ref_logps"] = np.where((index >= 0)[..., None], self.ref_logps[np.maximum(index, 0)], 0.0).astype(
                np.float32
            )
        return out


def packing_units(manifest: dict, shard_dir, group_mirrors: bool) -> list[tuple[int, ...]]:
    """Single examples, or (example, mirror) units for the pairs the manifest lists when `group_mirrors`."""
    if not group_mirrors:
        return [(i,) for i in range(manifest["num_examples"])]
    if "mirror_pairs" not in manifest:
        raise ValueError(f"{shard_dir}: the manifest lists no mirror_pairs; re-run `rpo-jax tokenize`")
    pairs = manifest["mirror_pairs"]
    paired = {int(i) for p in pairs for i in p}
    singles = [(i,) for i in range(manifest["num_examples"]) if i not in paired]
    return [tuple(int(i) for i in p) for p in pairs] + singles


def example_packed_lengths(records: ShardRecords, num_examples: int, shared_prompt: bool) -> np.ndarray:
    """Each example's packed length (one read of every record)."""
    return np.asarray([packed_length(records[i], shared_prompt) for i in range(num_examples)], np.int64)


def plan_packed_rows(
    records: ShardRecords, manifest: dict, shard_dir, shared_prompt: bool, group_mirrors: bool, capacity: int
) -> tuple[list[tuple[int, ...]], np.ndarray, int]:
    """(planned rows of example indices, each example's packed length, mirror units split because they are
    longer than a row together: packed as two single examples, so their halves may fall in different steps)."""
    lengths = example_packed_lengths(records, manifest["num_examples"], shared_prompt)
    units, split = [], 0
    for unit in packing_units(manifest, shard_dir, group_mirrors):
        # An example and its mirror longer than a row together go to rows of their own (counted, not hidden).
        fits = sum(int(lengths[e]) for e in unit) <= capacity
        units.extend([unit] if fits else [(e,) for e in unit])
        split += not fits
    return [tuple(r) for r in plan_rows(units, lengths, capacity)], lengths, split


def make_packed_loader(
    shard_dir: str | Path,
    *,
    rows_per_batch: int,
    seed: int,
    shared_prompt: bool,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    max_length: int | None = None,
    num_workers: int = 0,
    read_threads: int = 4,
    ref_logps: np.ndarray | None = None,
    group_mirrors: bool = False,
) -> PairBatchIterator:
    """Batches of `rows_per_batch` packed rows of G × `max_length` (default: the manifest's) tokens (`packing`).

    The returned iterator's `packing` dict gives the plan: rows, slots, row_length, fill, and mirror_units_split
    (mirror units longer than a row, packed as two single examples so their halves may fall in different steps).
    """
    import grain

    manifest = read_manifest(shard_dir)
    max_length = manifest["max_length"] if max_length is None else max_length
    if rows_per_batch < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"need rows_per_batch >= 1 and 0 <= shard_index < shard_count, got {rows_per_batch}, "
            f"{shard_index} of {shard_count}"
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (repeat forever), got {num_epochs}")
    if manifest["max_row_length"] > max_length:
        raise ValueError(
            f"{shard_dir}: rows up to {manifest['max_row_length']} tokens do not fit max_length {max_length}"
        )
    if ref_logps is not None:
        ref_logps = _checked_ref_logps(np.asarray(ref_logps), manifest, shard_dir)
    records = ShardRecords(shard_dir, manifest)
    capacity = packed_row_length(max_length, manifest["group_size"])
    rows, lengths, split = plan_packed_rows(records, manifest, shard_dir, shared_prompt, group_mirrors, capacity)
    slots = max(len(r) for r in rows)
    ds = grain.MapDataset.source(rows).shuffle(seed=seed).repeat(num_epochs)
    num_batches = None
    if num_epochs is not None:
        global_batch = rows_per_batch * shard_count
        total = len(rows) * num_epochs // global_batch * global_batch
        if total == 0:
            raise ValueError(f"{shard_dir}: {len(rows)} packed rows give no full batch of {global_batch} rows")
        ds, num_batches = ds[:total], total // global_batch
    ds = ds[shard_index::shard_count].map(ReadPackedRow(records))
    collate = CollatePackedRows(capacity, slots, manifest["pad_token_id"], shared_prompt, ref_logps)
    ds = ds.batch(rows_per_batch, drop_remainder=True, batch_fn=collate)
    iterator = PairBatchIterator(iterate(ds, read_threads, num_workers), manifest, num_batches)
    iterator.packing = {
        "rows": len(rows),
        "mirror_units_split": split,
        "slots": slots,
        "row_length": capacity,
        "fill": round(packing_efficiency(lengths, len(rows), capacity), 4),
    }
    return iterator
