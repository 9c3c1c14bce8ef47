"""Training batches of a weighted mixture of shard folders (`mixture`): padded like `loader`'s, or packed like
`packed_loader`'s, from the one mixed stream every process builds alike; repeated forever (training only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipeline.records.batching import CollatePairs, iterate, padded_batches
from data_pipeline.records.loader import PairBatchIterator
from data_pipeline.records.mixture import (
    PACKING_MODES,
    UNIT_EXAMPLES,
    UNIT_MIRROR_UNITS,
    UNIT_ROWS,
    Mixture,
    MixtureSource,
    MixtureSourceError,
    ShiftBy,
    labelled,
)
from data_pipeline.records.packed_loader import CollatePackedRows, ReadPackedRow, plan_packed_rows
from data_pipeline.records.packing import packed_row_length, packing_efficiency


def make_mixture_loader(
    sources: Sequence[MixtureSource],
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    length_buckets: tuple[int, ...] = (),
    max_length: int | None = None,
    packing: str = "none",
    group_mirrors: bool = False,
    num_workers: int = 0,
    read_threads: int = 4,
) -> PairBatchIterator:
    """This process's batches of the mixture: `batch_size` examples (or packed rows with `packing`) each.

    The iterator also carries `mixture` (the `Mixture`, for reports), `mixture_unit` (what its weights count) and,
    when packed, `packing` (the plan, as `make_packed_loader` gives it)."""
    if packing not in PACKING_MODES:
        raise ValueError(f"packing must be one of {PACKING_MODES}, got {packing!r}")
    if not 0 <= shard_index < shard_count or batch_size < 1:
        raise ValueError(f"need batch_size >= 1 and 0 <= shard_index < shard_count, got {batch_size}, {shard_index}")
    mixture = Mixture(sources)
    manifest = mixture.manifests[0]
    max_length = manifest["max_length"] if max_length is None else max_length
    for source, source_manifest in zip(mixture.sources, mixture.manifests):
        if source_manifest["max_row_length"] > max_length:
            raise MixtureSourceError(
                f"{source.label}={source.path}: rows up to {source_manifest['max_row_length']} tokens do not fit "
                f"max_length {max_length}; re-tokenize it or raise max_length"
            )
    if packing != "none":
        iterator = _packed_batches(
            mixture,
            batch_size,
            seed,
            shard_index,
            shard_count,
            max_length,
            packing,
            group_mirrors,
            num_workers,
            read_threads,
        )
        iterator.mixture_unit = UNIT_ROWS
    else:
        if group_mirrors and (batch_size * shard_count) % 2:
            raise ValueError(f"group_mirrors needs an even global batch, got {batch_size} x {shard_count} processes")
        batches = padded_batches(
            mixture.example_order(seed, group_mirrors),
            mixture.records,
            mixture.longest_rows() if length_buckets else None,
            num_real=None,
            batch_size=batch_size,
            shard_index=shard_index,
            shard_count=shard_count,
            length_buckets=length_buckets,
            max_length=max_length,
            collate=CollatePairs(max_length, manifest["pad_token_id"], None),
            drop_remainder=True,
        )
        iterator = PairBatchIterator(iterate(batches, read_threads, num_workers), manifest, None)
        iterator.mixture_unit = UNIT_MIRROR_UNITS if group_mirrors else UNIT_EXAMPLES
    iterator.mixture = mixture
    return iterator


def _packed_batches(
    mixture,
    rows_per_batch,
    seed,
    shard_index,
    shard_count,
    max_length,
    packing,
    group_mirrors,
    num_workers,
    read_threads,
) -> PairBatchIterator:
    """Each source's rows planned on their own (a row never mixes sources), shuffled per source, mixed by Grain."""
    import grain

    shared_prompt = packing == "packed_shared_prompt"
    capacity = packed_row_length(max_length, mixture.manifests[0]["group_size"])
    orders, plans = [], []
    for k, (source, manifest, records) in enumerate(zip(mixture.sources, mixture.manifests, mixture.records.parts)):
        plan = labelled(
            source,
            lambda s=source, m=manifest, r=records: plan_packed_rows(
                r, m, s.path, shared_prompt, group_mirrors, capacity
            ),
        )
        rows = [ShiftBy(int(mixture.offsets[k]))(row) for row in plan[0]]
        orders.append(grain.MapDataset.source(rows).shuffle(seed=mixture.seed(seed, k)).repeat(None))
        plans.append((rows, *plan[1:]))
    slots = max(len(row) for rows, _, _ in plans for row in rows)
    ds = grain.MapDataset.mix(orders, mixture.weights)[shard_index::shard_count].map(ReadPackedRow(mixture.records))
    collate = CollatePackedRows(capacity, slots, mixture.manifests[0]["pad_token_id"], shared_prompt, None)
    ds = ds.batch(rows_per_batch, drop_remainder=True, batch_fn=collate)
    iterator = PairBatchIterator(iterate(ds, read_threads, num_workers), mixture.manifests[0], None)
    num_rows = sum(len(rows) for rows, _, _ in plans)
    lengths = np.concatenate([lengths for _, lengths, _ in plans])
    iterator.packing = {
        "rows": num_rows,
        "mirror_units_split": sum(split for _, _, split in plans),
        "slots": slots,
        "row_length": capacity,
        "fill": round(packing_efficiency(lengths, num_rows, capacity), 4),
    }
    return iterator
