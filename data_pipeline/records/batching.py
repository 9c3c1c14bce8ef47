"""From a stream of example indices to this process's padded batches (`loader`, `mixture`).

Each record is read, decoded and tagged with its *global* batch's padded length (the smallest length bucket that
fits the global batch's longest row, looked up in the row lengths without reading a record, so every process pads
to the same length), then the stream is sliced to this process's share and batched. Every callable here is
picklable: it runs inside Grain worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_length(longest_row: int, length_buckets: Sequence[int], max_length: int) -> int:
    """Smallest bucket >= the longest row; `max_length` when no bucket fits (or none are given)."""
    if longest_row > max_length:
        raise ValueError(f"row of {longest_row} tokens exceeds max_length {max_length}")
    return min([b for b in length_buckets if b >= longest_row] + [max_length])


class CollatePairs:
    """Pads decoded records into one batch, to their global batch's `pad_to` (0: to max_length). Picklable: runs
    inside Grain worker processes."""

    def __init__(self, max_length: int, pad_token_id: int, ref_logps: np.ndarray | None):
        self.max_length, self.pad_token_id = max_length, pad_token_id
        self.ref_logps = ref_logps

    def __call__(self, records: Sequence[dict]) -> dict[str, np.ndarray]:
        batch, group = len(records), len(records[0]["rows"])
        longest = max(len(row) for record in records for row in record["rows"])
        length = records[0]["pad_to"] or self.max_length
        if longest > length or any(r["pad_to"] != records[0]["pad_to"] for r in records):
            raise ValueError(f"batch padded to {length} tokens holds a row of {longest} (row lengths file stale?)")
        tokens = np.full((batch, group, length), self.pad_token_id, dtype=np.int32)
        loss_mask = np.zeros((batch, group, length), dtype=bool)
        segment_ids = np.zeros((batch, group, length), dtype=np.int32)
        positions = np.zeros((batch, group, length), dtype=np.int32)
        for b, record in enumerate(records):
            for g, row in enumerate(record["rows"]):
                n = len(row)
                tokens[b, g, :n] = row
                segment_ids[b, g, :n] = 1
                positions[b, g, :n] = np.arange(n, dtype=np.int32)
                loss_mask[b, g, record["response_starts"][g] : n] = True
        example_index = np.asarray([r["example_index"] for r in records], dtype=np.int64)
        out = {
            "tokens": tokens,
            "loss_mask": loss_mask,
            "segment_ids": segment_ids,
            "positions": positions,
            "margin": np.asarray([r["margin"] for r in records], dtype=np.int32),
            "example_index": example_index,
            "example_weight": np.asarray([r["weight"] for r in records], dtype=np.float32),
        }
        if self.ref_logps is not None:
            out["ref_logps"] = self.ref_logps[example_index].astype(np.float32)
        return out


class GlobalBatchLength:
    """Stream position -> the padded length of the global batch holding it: the smallest bucket that fits that
    batch's longest row, looked up in the row lengths (no record read). Picklable: runs in Grain workers."""

    def __init__(self, order, longest_rows: np.ndarray, global_batch: int, length_buckets, max_length: int):
        self.order, self.longest_rows, self.global_batch = order, longest_rows, global_batch
        self.length_buckets, self.max_length = length_buckets, max_length
        self._cached = (-1, 0)  # (global batch number, its length): a process reads a batch's rows in a row

    def __call__(self, position: int) -> int:
        number = position // self.global_batch
        if self._cached[0] != number:
            stop = min((number + 1) * self.global_batch, len(self.order))
            indices = [self.order[p] for p in range(number * self.global_batch, stop)]
            longest = int(self.longest_rows[indices].max())
            self._cached = (number, bucket_length(longest, self.length_buckets, self.max_length))
        return self._cached[1]


class ReadDecode:
    """(stream position, example index) -> the decoded record with its weight: 1, or 0 when the position is past
    the real examples (the fill rows of `remainder="fill"`), and `pad_to`, its global batch's padded length (0 =
    no buckets: every batch is padded to max_length). Picklable: runs inside Grain worker processes."""

    def __init__(self, records, num_real: int | None, batch_length: GlobalBatchLength | None):
        self.records, self.num_real, self.batch_length = records, num_real, batch_length

    def __call__(self, position: int, example_index: int) -> dict:
        record = self.records[int(example_index)]
        record["weight"] = 0.0 if self.num_real is not None and position >= self.num_real else 1.0
        record["pad_to"] = self.batch_length(position) if self.batch_length is not None else 0
        return record


def padded_batches(
    ds,
    records,
    longest_rows,
    *,
    num_real,
    batch_size,
    shard_index,
    shard_count,
    length_buckets,
    max_length,
    collate,
    drop_remainder: bool,
):
    """The stream of example indices `ds` (global, every process the same) -> this process's padded batches:
    each record tagged with its global batch's bucket (from `longest_rows`, by example index), sliced, batched."""
    batch_length = None
    if length_buckets:
        global_batch = batch_size * shard_count
        batch_length = GlobalBatchLength(ds, longest_rows, global_batch, tuple(sorted(length_buckets)), max_length)
    ds = ds.map_with_index(ReadDecode(records, num_real, batch_length))
    ds = ds[shard_index::shard_count]
    return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate)


def iterate(ds, read_threads: int, num_workers: int):
    """A MapDataset of batches as an iterable with a checkpointable position, read by threads (and by
    `num_workers` worker processes when > 0)."""
    import grain

    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, read_threads)))
    if num_workers > 0:
        _mark_absl_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter_ds


def _mark_absl_flags_parsed() -> None:
    # Grain's mp_prefetch reads an absl flag (worker profiling) once JAX's profiler is importable; in a program that
    # does not run absl.app (rpo-jax, pytest) that read raises UnparsedFlagAccessError. Marking the flags parsed
    # keeps every flag at its default; it is a no-op when absl already parsed them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
