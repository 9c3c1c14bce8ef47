"""What a shard folder's manifest says about its rows, gathered one example at a time: row lengths, the longest
row, packing efficiency and RPO mirror pairs. The writer fills it while tokenizing; a TFDS folder made elsewhere
fills it by reading its records once (`tfds_folder`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipeline.records.packing import efficiency_summary, packed_length


class ShardStats:
    def __init__(self):
        self.num_examples = 0
        self.group_size: int | None = None
        self.max_row_length = 0
        self.row_lengths: list[int] = []
        self.packed_lengths: dict[str, list[int]] = {"packed": [], "packed_shared_prompt": []}
        self._by_responses: dict[bytes, list[int]] = {}  # G=2: sorted response token ids -> example indices

    def add(self, rows: Sequence[np.ndarray], response_starts: Sequence[int]) -> int:
        """Counts the example; returns its example index."""
        if self.group_size is None:
            self.group_size = len(rows)
        elif len(rows) != self.group_size:
            raise ValueError(f"group size {len(rows)} differs from the shard's {self.group_size}")
        self.row_lengths.extend(len(r) for r in rows)
        record = {"rows": rows, "response_starts": response_starts}
        self.packed_lengths["packed"].append(packed_length(record, shared_prompt=False))
        self.packed_lengths["packed_shared_prompt"].append(packed_length(record, shared_prompt=True))
        self.max_row_length = max(self.max_row_length, *(len(r) for r in rows))
        if self.group_size == 2:
            responses = sorted(
                np.asarray(row[start:], dtype="<i4").tobytes() for row, start in zip(rows, response_starts, strict=True)
            )
            self._by_responses.setdefault(b"\xff".join(responses), []).append(self.num_examples)
        self.num_examples += 1
        return self.num_examples - 1

    def row_lengths_array(self) -> np.ndarray:
        """[num_examples, group_size] int32, row i = example index i."""
        return np.asarray(self.row_lengths, dtype=np.int32).reshape(self.num_examples, self.group_size or 0)

    def mirror_pairs(self) -> list[list[int]]:
        """Pairs of examples holding the same two responses in swapped roles: an RPO pair (x_Si; y_i > y_j) and its
        mirror (x_Sj; y_j > y_i). Examples sharing both responses are paired in order of appearance."""
        pairs = []
        for indices in self._by_responses.values():
            pairs.extend([indices[k], indices[k + 1]] for k in range(0, len(indices) - 1, 2))
        return sorted(pairs)

    def manifest_fields(self, max_length: int | None) -> dict:
        lengths = np.asarray(self.row_lengths or [0])
        return {
            "num_examples": self.num_examples,
            "group_size": self.group_size,
            "max_row_length": int(self.max_row_length),
            "row_length_percentiles": {str(q): int(np.percentile(lengths, q)) for q in (50, 90, 99, 100)},
            "mirror_pairs": self.mirror_pairs(),
            "packing": efficiency_summary(
                len(self.row_lengths),
                int(sum(self.row_lengths)),
                self.packed_lengths,
                max_length or max(self.max_row_length, 1),
                self.group_size or 1,
            ),
        }
