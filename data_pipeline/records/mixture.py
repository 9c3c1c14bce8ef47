"""Weighted mixtures of tokenized pair datasets (`data.sources` of `rpo-jax train`), mixed by Grain.

Each source is a shard folder. Its examples get global ids, source k's example i being `offsets[k] + i` (the
batches' `example_index`), so everything after the order is the one-folder loader's own code: length buckets and
padding (`batching`), process slices, packed rows (`packed_loader`). Order of operations (every process builds the
same stream):
  per source k, its own order seeded by (seed, k): examples shuffled, reshuffled each epoch, repeated forever; with
  `group_mirrors` its two-example units (`mirrors`); with packing its planned rows, shuffled the same way
  -> `grain.MapDataset.mix(orders, weights)` -> mirror units flattened back into examples -> the loader's tail.

Grain's mix is a deterministic interleave, not a random draw: among the first n positions, source k holds n * q_k
to within K - 1 positions for K sources (one for two), q_k being the weights' shares as Grain rounds the weights to
integers (the smallest to 100, so q_k is within 1 % of the weight's share; `position_counts`). The weights count
positions: examples, or packed rows with packing (shares of the token budget). A source smaller than its share is
simply repeated sooner (shorter epochs); within a source no example repeats before every other one was seen. The
iterator state is Grain's position in the mixed stream, so a checkpoint restores the mixture exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.records.mirrors import MirrorUnitOrder, mirror_units
from data_pipeline.records.pair_example import ShardRecords
from data_pipeline.records.shards import read_manifest, read_row_lengths

PACKING_MODES = ("none", "packed", "packed_shared_prompt")
# What one position of the mixed stream is, in the realised proportions (`Mixture.realised`).
UNIT_EXAMPLES, UNIT_MIRROR_UNITS, UNIT_ROWS = "examples", "examples (mirror units)", "packed rows"


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    """One shard folder and its weight; `label` names it in messages (e.g. `data.sources[1]`)."""

    path: str
    weight: float
    label: str


class MixtureSourceError(UserError):
    """A source of a mixture cannot be read, or does not fit with the others; the message names it."""


class ShiftBy:
    """Example index -> global id (picklable: runs in Grain workers)."""

    def __init__(self, offset: int):
        self.offset = offset

    def __call__(self, index):
        return tuple(int(i) + self.offset for i in index) if isinstance(index, tuple) else int(index) + self.offset


class UnitPairs:
    """A mirror-unit order (units at even positions) read two examples at a time: position u -> (2u, 2u + 1)."""

    def __init__(self, order: MirrorUnitOrder):
        self.order = order

    def __len__(self) -> int:
        return len(self.order) // 2

    def __getitem__(self, unit: int) -> tuple[int, int]:
        return self.order[2 * unit], self.order[2 * unit + 1]


class Flattened:
    """A stream of two-example units read one example at a time (units stay at even positions)."""

    def __init__(self, units):
        self.units = units

    def __len__(self) -> int:
        return min(2 * len(self.units), np.iinfo(np.int64).max)

    def __getitem__(self, position: int) -> int:
        return self.units[position // 2][position % 2]


class MixedRecords:
    """Global id -> the decoded record of its source, `example_index` set to the global id (picklable)."""

    def __init__(self, parts: list[ShardRecords], offsets: np.ndarray):
        self.parts, self.offsets = parts, offsets

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, global_id: int) -> dict:
        source = int(np.searchsorted(self.offsets, global_id, side="right")) - 1
        record = self.parts[source][int(global_id) - int(self.offsets[source])]
        record["example_index"] = int(global_id)
        return record


def position_counts(num_positions: int, weights: Sequence[float]) -> list[int]:
    """How many of the first `num_positions` of `grain.MapDataset.mix(datasets, weights)` each source holds.

    Grain's own arithmetic (grain/_src/python/dataset/transformations/mix.py: weights rounded to integers with the
    smallest at 100, positions dealt by nested floor division), restated so a long run's counts cost no lookups;
    tests/test_mixture.py checks it against the mixed stream itself."""
    proportions = [int(w * 100 / min(weights)) for w in weights]
    remaining, left, counts = sum(proportions), num_positions, []
    for proportion in proportions:
        rest = left * (remaining - proportion) // remaining
        counts.append(left - rest)
        left, remaining = rest, remaining - proportion
    return counts


class Mixture:
    """The sources' manifests, checked to fit together, and their records under global ids."""

    def __init__(self, sources: Sequence[MixtureSource]):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.sources = tuple(sources)
        self.manifests = [_read_manifest(s) for s in sources]
        for source, manifest in zip(self.sources[1:], self.manifests[1:]):
            _check_fits(source, manifest, self.sources[0], self.manifests[0])
        sizes = [m["num_examples"] for m in self.manifests]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.records = MixedRecords([_records(s, m) for s, m in zip(self.sources, self.manifests)], self.offsets)

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def seed(self, seed: int, k: int) -> int:
        """Source k's own shuffle seed, drawn from the run's seed (sources of equal size shuffle differently)."""
        return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])

    def example_order(self, seed: int, group_mirrors: bool):
        """The mixed stream of global example ids."""
        import grain

        if not group_mirrors:
            orders = [
                grain.MapDataset.range(m["num_examples"]).shuffle(seed=self.seed(seed, k)).repeat(None)
                for k, m in enumerate(self.manifests)
            ]
            return grain.MapDataset.mix(
                [o.map(ShiftBy(int(off))) for o, off in zip(orders, self.offsets)], self.weights
            )
        units = []
        for k, (source, manifest) in enumerate(zip(self.sources, self.manifests)):
            pairs, leftover = labelled(source, lambda s=source, m=manifest: mirror_units(m, s.path))
            order = MirrorUnitOrder(
                pairs + self.offsets[k], leftover + self.offsets[k], seed=self.seed(seed, k), num_epochs=None
            )
            units.append(grain.MapDataset.source(UnitPairs(order)))
        return grain.MapDataset.source(Flattened(grain.MapDataset.mix(units, self.weights)))

    def longest_rows(self) -> np.ndarray:
        """[total examples]: each example's longest row, by global id."""
        return np.concatenate(
            [read_row_lengths(s.path, m).max(axis=1, initial=0) for s, m in zip(self.sources, self.manifests)]
        )

    def fingerprint(self) -> str:
        return mixture_fingerprint(self.sources, self.manifests)

    def realised(self, num_positions: int, unit: str) -> list[dict]:
        """Per source: its weight's share and what the first `num_positions` positions of the stream hold, counted in
        `unit` (examples, or packed rows); with mirror units each position of the mix is two examples."""
        per_mixed = 2 if unit == UNIT_MIRROR_UNITS else 1
        counts = [per_mixed * n for n in position_counts(num_positions // per_mixed, self.weights)]
        total = sum(self.weights)
        return [
            {
                "source": s.label,
                "path": s.path,
                "weight": s.weight,
                "weight_share": s.weight / total,
                "examples_in_source": m["num_examples"],
                "trained": n,
                "trained_share": n / max(num_positions, 1),
            }
            for s, m, n in zip(self.sources, self.manifests, counts)
        ]


def mixture_fingerprint(sources: Sequence[MixtureSource], manifests: Sequence[dict] | None = None) -> str:
    """sha256 over each source's content fingerprint and share of the weights, in order (paths left out: folders
    move; weights 7 : 3 mix as 0.7 : 0.3 do)."""
    manifests = manifests or [_read_manifest(s) for s in sources]
    total = sum(s.weight for s in sources)
    payload = [[m["fingerprint"], s.weight / total] for s, m in zip(sources, manifests)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def labelled(source: MixtureSource, read):
    """`read()`, its error (a missing or damaged file, a bad row) prefixed with the source's label and path."""
    try:
        return read()
    except (UserError, ValueError, OSError) as err:
        raise MixtureSourceError(f"{source.label}={source.path}: {err}") from err


def _read_manifest(source: MixtureSource) -> dict:
    return labelled(source, lambda: read_manifest(source.path))


def _records(source: MixtureSource, manifest: dict) -> ShardRecords:
    return labelled(source, lambda: ShardRecords(source.path, manifest))


def _check_fits(source: MixtureSource, manifest: dict, first: MixtureSource, first_manifest: dict) -> None:
    """Batches of a mixture hold rows of every source: same group size, pad id, tokenizer and chat template."""
    for what, key in (
        ("group size", ("group_size",)),
        ("pad token id", ("pad_token_id",)),
        ("tokenizer files", ("tokenizer", "files_sha256")),
        ("chat template", ("chat_template", "text")),
    ):
        mine, theirs = _get(manifest, key), _get(first_manifest, key)
        if mine is not None and theirs is not None and mine != theirs:
            raise MixtureSourceError(
                f"{source.label}={source.path}: its {what} differs from {first.label}'s ({first.path}); the sources "
                "of a mixture share one tokenizer and chat template and hold groups of the same size"
            )


def _get(manifest: dict, key: tuple[str, ...]):
    value = manifest
    for part in key:
        value = value.get(part) if isinstance(value, dict) else None
    return value
