"""Instruction reading on mirrored RPO pairs, measured per mirror unit (docs/algorithms.md §4, "Mirror units").

A mirror unit is an RPO pair and its mirror: a = (x_i; y_i ≻ y_j) and b = (x_j; y_j ≻ y_i), with x_i the instruction
rewritten so that y_i satisfies all of it. With h(x, y) the implicit reward (β times the policy-minus-reference
log-prob), the pair margins are z_a = h(x_i, y_i) − h(x_i, y_j) and z_b = h(x_j, y_j) − h(x_j, y_i), and the unit's
contrast is

    c = z_a + z_b = [h(x_i, y_i) + h(x_j, y_j)] − [h(x_i, y_j) + h(x_j, y_i)],

the matched assignment of responses to instructions minus the swapped one. Anything that depends on a response
alone (its length, its style, "y_i is the better text") cancels exactly, and so does anything that depends on an
instruction alone. A model that ignores the instruction gets c = 0 on every unit, and exactly one of the two
directions right (pair-level reward accuracy 0.5 by construction, whatever it learned about responses).

- unit accuracy: the share of units with c > 0, a tie (c = 0) counted half. Chance is 0.5: exactly 0.5 for an
  instruction-blind model (every unit a tie), and 0.5 in expectation for any model that cannot tell which
  instruction belongs to which response (exchanging the two responses flips the sign of c).
- both right: the share of units with z_a > 0 and z_b > 0. An instruction-blind model scores exactly 0; two
  independent coin flips would score 0.25. Reported beside the accuracy, not as the test.
- contrast: the mean of c, in reward units (β·nats).

The interval is Wilson's 95% score interval over units, which treats units as independent: true when each
instruction contributes one unit (the shipped held-out pairs), optimistic otherwise (the experiment resamples
instructions instead, `experiments/stats.py`).
"""

from __future__ import annotations

import math

import numpy as np

Z_95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a binomial share (`successes` may hold halves for ties)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def unit_contrasts(pair_margins: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c [U], both directions right [U] bool) from per-pair margins z [N] and units [U, 2] of pair indices."""
    z = np.asarray(pair_margins, np.float64)[np.asarray(units, np.int64).reshape(-1, 2)]
    return z.sum(axis=1), (z > 0).all(axis=1)


def mirror_unit_metrics(pair_margins: np.ndarray, units) -> dict[str, float]:
    """`mirror/*` metrics over the units (empty dict when there are none)."""
    units = np.asarray(units, np.int64).reshape(-1, 2)
    if not len(units):
        return {}
    contrast, both = unit_contrasts(pair_margins, units)
    right = float((contrast > 0).sum() + 0.5 * (contrast == 0).sum())
    low, high = wilson_interval(right, len(units))
    return {
        "mirror/accuracy": right / len(units),
        "mirror/accuracy_low": low,
        "mirror/accuracy_high": high,
        "mirror/both_right": float(both.mean()),
        "mirror/contrast": float(contrast.mean()),
        "mirror/units": float(len(units)),
    }
