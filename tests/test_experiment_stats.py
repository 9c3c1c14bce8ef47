"""Bootstrap intervals: paired differences against hand-computed values and known coverage."""

import numpy as np
import pytest

from experiments.stats import accuracy_interval, paired_difference


def test_point_estimates_are_the_plain_accuracies():
    counts = np.array([1, 2, 3, 1])
    a = np.array([1, 2, 0, 0])  # prompts 0, 1 fully followed; 3 of 7 instructions
    b = np.array([1, 1, 3, 1])  # prompts 0, 2, 3; 6 of 7
    diff = paired_difference(a, b, counts, replicates=200)
    assert diff["prompt"]["delta"] == pytest.approx(3 / 4 - 2 / 4)
    assert diff["instruction"]["delta"] == pytest.approx(6 / 7 - 3 / 7)
    single = accuracy_interval(b, counts, replicates=200)
    assert single["prompt"]["accuracy"] == pytest.approx(0.75)
    assert single["prompt"]["low"] <= 0.75 <= single["prompt"]["high"]


def test_identical_models_give_a_degenerate_zero_interval_and_pairing_narrows_it():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 4, 300)
    a = np.minimum(counts, rng.integers(0, 4, 300))
    same = paired_difference(a, a, counts, replicates=300)
    assert same["prompt"] == {"delta": 0.0, "low": 0.0, "high": 0.0}
    # B = A plus one more followed prompt out of 300: the paired interval is tiny, an unpaired one would not be.
    b = a.copy()
    flip = int(np.flatnonzero(a < counts)[0])
    b[flip] = counts[flip]
    diff = paired_difference(a, b, counts, replicates=300)
    assert diff["prompt"]["delta"] == pytest.approx(1 / 300)
    assert 0.0 <= diff["prompt"]["low"] and diff["prompt"]["high"] <= 3 / 300 + 1e-9


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits, trials, n = 0, 200, 150
    for trial in range(trials):
        counts = np.ones(n, int)
        a = (rng.random(n) < 0.5).astype(int)
        b = np.where(rng.random(n) < 0.2, 1 - a, a)  # true mean difference 0 (flips are symmetric in expectation)
        diff = paired_difference(a, b, counts, replicates=400, seed=trial)
        hits += diff["prompt"]["low"] <= 0.0 <= diff["prompt"]["high"]
    assert 0.88 <= hits / trials <= 0.99


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1, 0], [1], [1, 1])
    with pytest.raises(ValueError, match="at least one instruction"):
        accuracy_interval([0, 0], [1, 0])
