"""Mirror grouping for RPO (`group_mirrors`): a pair and its mirror always in the same optimizer step.

The loader's `group_mirrors` replaces the example shuffle by a shuffle of two-example units: each pair with its mirror
(the same two responses in swapped roles, `manifest["mirror_pairs"]`), the remaining examples two by two. Units
sit at even positions of the global stream, so with an even global batch a pair and its mirror always land in
the same optimizer step. Why: the mirror's gradient cancels the pair's prompt-independent part ("y_i is better
than y_j"), leaving only what depends on the instruction; shuffled apart, the two directions are learned and
unlearned in turn, and a small model memorises responses instead of reading instructions.
"""

from __future__ import annotations

import sys

import numpy as np


def mirror_units(manifest: dict, shard_dir) -> tuple[np.ndarray, np.ndarray]:
    """([N // 2, 2] example indices: each mirror pair, then the unpaired examples two by two (sorted); the one
    example left over when N is odd, else none)."""
    if "mirror_pairs" not in manifest:
        raise ValueError(f"{shard_dir}: the manifest lists no mirror_pairs; re-run `rpo-jax tokenize`")
    pairs = [tuple(p) for p in manifest["mirror_pairs"]]
    paired = {i for p in pairs for i in p}
    rest = [i for i in range(manifest["num_examples"]) if i not in paired]
    units = pairs + [tuple(rest[k : k + 2]) for k in range(0, len(rest) - 1, 2)]
    return np.asarray(units, dtype=np.int64).reshape(-1, 2), np.asarray(rest[len(rest) - len(rest) % 2 :], np.int64)


class MirrorUnitOrder:
    """Example indices in stream order for `group_mirrors`: per epoch, a seeded permutation of two-example units,
    flattened. A random-access source (`__len__`/`__getitem__`, picklable for Grain workers) spanning all epochs.

    With an odd number of examples the one left over goes last in even epochs and first in odd ones, so that across
    the epoch boundary it pairs with the next leftover and every unit still starts at an even stream position.
    """

    def __init__(self, units: np.ndarray, leftover: np.ndarray, *, seed: int, num_epochs: int | None):
        self.units, self.leftover, self.seed = units, leftover, seed
        self.num_examples = units.size + leftover.size
        self.num_epochs = num_epochs if num_epochs is not None else sys.maxsize // max(self.num_examples, 1)
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_examples * self.num_epochs

    def order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            flat = self.units[np.random.default_rng([self.seed, epoch]).permutation(len(self.units))].ravel()
            self._cached = (epoch, np.concatenate([self.leftover, flat] if epoch % 2 else [flat, self.leftover]))
        return self._cached[1]

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch, position = divmod(int(index), self.num_examples)
        return int(self.order(epoch)[position])
