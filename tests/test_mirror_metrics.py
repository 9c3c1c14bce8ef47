"""Mirror-unit metrics (docs/algorithms.md §4): response-only rewards cancel in a unit's contrast, an
instruction-blind model reads exactly chance, and the seed-and-prompt bootstrap of the experiments."""

import numpy as np
import pytest

from experiments.stats import seed_prompt_difference, seed_prompt_interval
from rpo_jax.train.mirror_metrics import mirror_unit_metrics, unit_contrasts, wilson_interval


def margins_of(h: dict, units: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Pair margins of units (x_i, y_i > y_j), (x_j, y_j > y_i) from a reward table h[(x, y)]."""
    z, index = [], []
    for i, j in units:
        index.append((len(z), len(z) + 1))
        z += [h[i, i] - h[i, j], h[j, j] - h[j, i]]
    return np.asarray(z), np.asarray(index)


def test_response_only_rewards_cancel_and_read_chance():
    rng = np.random.default_rng(0)
    names = [f"r{n}" for n in range(40)]
    quality = {y: rng.normal() for y in names}  # a model that scores responses alone, however well
    blind = {(x, y): quality[y] for x in names for y in names}
    units = [(names[2 * n], names[2 * n + 1]) for n in range(20)]
    z, index = margins_of(blind, units)
    contrast, both = unit_contrasts(z, index)
    assert np.allclose(contrast, 0.0) and not both.any()
    assert (z > 0).mean() == 0.5  # pair-level accuracy: exactly one direction of each unit right
    metrics = mirror_unit_metrics(z, index)
    assert metrics["mirror/accuracy"] == 0.5 and metrics["mirror/both_right"] == 0.0


def test_instruction_reading_shows():
    names = [f"r{n}" for n in range(10)]
    reads = {(x, y): (1.0 if x == y else 0.0) + 0.3 * n for x in names for n, y in enumerate(names)}
    z, index = margins_of(reads, [(names[2 * n], names[2 * n + 1]) for n in range(5)])
    metrics = mirror_unit_metrics(z, index)
    assert metrics["mirror/accuracy"] == 1.0 and metrics["mirror/contrast"] == pytest.approx(2.0)
    assert metrics["mirror/units"] == 5 and 0.5 < metrics["mirror/accuracy_low"] < 1.0


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)


def test_seed_prompt_bootstrap():
    rng = np.random.default_rng(1)
    counts = np.ones((3, 200))
    passed = (rng.random((3, 200)) < 0.7).astype(float)
    interval = seed_prompt_interval(passed, counts, replicates=500)
    assert interval["low"] < interval["accuracy"] < interval["high"]
    assert interval["accuracy"] == pytest.approx(passed.mean())
    same = seed_prompt_difference(passed, passed, counts, replicates=500)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0}
    better = seed_prompt_difference(passed, np.ones_like(passed), counts, replicates=500)
    assert 0 < better["low"] <= better["delta"] <= better["high"]
    with pytest.raises(ValueError, match="seeds, prompts"):
        seed_prompt_interval(passed[0], counts[0])
