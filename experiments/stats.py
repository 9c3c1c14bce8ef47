"""Bootstrap intervals for instruction-following accuracies, and for differences between models scored on the same
prompts (paired).

Prompts are the resampling unit (a cluster bootstrap): instruction-level accuracy is recomputed from the resampled
prompts' instruction verdicts, so the instructions of one prompt stay together. In a comparison both models see the
same resampled prompts in each replicate, which is what makes the interval of their difference paired.
"""

from __future__ import annotations

import numpy as np

LEVELS = ("prompt", "instruction")


def _accuracies(passed: np.ndarray, counts: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """Prompt- and instruction-level accuracy per row of `index` ([R, P] prompt indices)."""
    return {
        "prompt": (passed[index] == counts[index]).mean(axis=1),
        "instruction": passed[index].sum(axis=1) / counts[index].sum(axis=1),
    }


def _checked(*arrays) -> list[np.ndarray]:
    arrays = [np.asarray(a, np.float64) for a in arrays]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or not arrays[0].size:
        raise ValueError(f"need non-empty 1-D arrays over the same prompts, got shapes {[a.shape for a in arrays]}")
    if (arrays[-1] < 1).any():
        raise ValueError("every prompt needs at least one instruction")
    return arrays


def _resamples(num_prompts: int, replicates: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_prompts, size=(replicates, num_prompts))


def accuracy_interval(passed, counts, *, replicates: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """One model: `passed[p]` instructions followed out of `counts[p]` for prompt p."""
    passed, counts = _checked(passed, counts)
    point = _accuracies(passed, counts, np.arange(len(counts))[None])
    boot = _accuracies(passed, counts, _resamples(len(counts), replicates, seed))
    tail = (1.0 - level) / 2.0
    return {
        name: {
            "accuracy": float(point[name][0]),
            "low": float(np.quantile(boot[name], tail)),
            "high": float(np.quantile(boot[name], 1.0 - tail)),
        }
        for name in LEVELS
    }


def paired_difference(
    passed_a, passed_b, counts, *, replicates: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Accuracy of B minus accuracy of A on the same prompts, with a paired percentile interval."""
    passed_a, passed_b, counts = _checked(passed_a, passed_b, counts)
    full, index = np.arange(len(counts))[None], _resamples(len(counts), replicates, seed)
    point_a, point_b = _accuracies(passed_a, counts, full), _accuracies(passed_b, counts, full)
    boot_a, boot_b = _accuracies(passed_a, counts, index), _accuracies(passed_b, counts, index)
    tail = (1.0 - level) / 2.0
    out = {}
    for name in LEVELS:
        delta = boot_b[name] - boot_a[name]
        out[name] = {
            "delta": float(point_b[name][0] - point_a[name][0]),
            "low": float(np.quantile(delta, tail)),
            "high": float(np.quantile(delta, 1.0 - tail)),
        }
    return out | {"num_prompts": int(len(counts)), "replicates": replicates, "level": level}


def _two_level(passed: np.ndarray, counts: np.ndarray, replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(point, bootstrap replicates) of Σ passed / Σ counts over seeds [S] and prompts [P], resampling both."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, passed.shape[0], size=(replicates, passed.shape[0]))
    prompts = rng.integers(0, passed.shape[1], size=(replicates, passed.shape[1]))
    picked = (seeds[:, :, None], prompts[:, None, :])  # [R, S, P] fancy index: seed s' and prompt p' of replicate r
    boot = passed[picked].sum(axis=(1, 2)) / counts[picked].sum(axis=(1, 2))
    return passed.sum() / counts.sum(), boot


def seed_prompt_interval(passed, counts, *, replicates: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy over several training seeds of one model: `passed[s, p]` items right out of `counts[s, p]` for seed
    s on prompt p. Seeds and prompts are both resampled (a two-level bootstrap): the interval covers the variation
    between training runs as well as between prompts."""
    passed, counts = np.asarray(passed, np.float64), np.asarray(counts, np.float64)
    if passed.ndim != 2 or passed.shape != counts.shape or not passed.size or (counts.sum(axis=0) < 1).any():
        raise ValueError(f"need [seeds, prompts] arrays with items on every prompt, got {passed.shape}, {counts.shape}")
    point, boot = _two_level(passed, counts, replicates, seed)
    tail = (1.0 - level) / 2.0
    return {"accuracy": float(point), "low": float(np.quantile(boot, tail)), "high": float(np.quantile(boot, 1 - tail))}


def seed_prompt_difference(passed_a, passed_b, counts, *, replicates: int = 2000, seed: int = 0, level: float = 0.95):
    """B minus A over the same seeds and prompts ([seeds, prompts] arrays; seed s of A and of B share their initial
    weights and data order), resampled together, so the interval is paired."""
    a, b, counts = (np.asarray(x, np.float64) for x in (passed_a, passed_b, counts))
    point_a, boot_a = _two_level(a, counts, replicates, seed)
    point_b, boot_b = _two_level(b, counts, replicates, seed)  # same seed: the same resamples
    delta, tail = boot_b - boot_a, (1.0 - level) / 2.0
    return {
        "delta": float(point_b - point_a),
        "low": float(np.quantile(delta, tail)),
        "high": float(np.quantile(delta, 1 - tail)),
    }


def runs_interval(passed, counts, *, replicates: int = 2000, seed: int = 0) -> dict:
    """One model trained with one seed or several: `passed[s, p]` of the `counts[p]` instructions of prompt p
    followed by seed s's model. One seed: `accuracy_interval` (over prompts); several: `seed_prompt_interval` at
    both levels (over seeds and prompts; prompt level counts a prompt as one item, right when all its instructions
    are)."""
    passed, counts = np.atleast_2d(np.asarray(passed, np.float64)), np.asarray(counts, np.float64)
    if passed.shape[0] == 1:
        return accuracy_interval(passed[0], counts, replicates=replicates, seed=seed)
    full = np.broadcast_to(counts, passed.shape)
    prompt = (passed == full).astype(np.float64)
    return {
        "prompt": seed_prompt_interval(prompt, np.ones_like(prompt), replicates=replicates, seed=seed),
        "instruction": seed_prompt_interval(passed, full, replicates=replicates, seed=seed),
    }


def runs_difference(passed_a, passed_b, counts, *, replicates: int = 2000, seed: int = 0) -> dict:
    """B minus A on the same prompts, `passed_*[s, p]` as in `runs_interval`. A model with one run (the untrained
    base model) stands for itself at every seed of the other. One seed: `paired_difference`; several:
    `seed_prompt_difference` at both levels, plus `per_seed` (each seed's `paired_difference`, in seed order)."""
    a, b = (np.atleast_2d(np.asarray(x, np.float64)) for x in (passed_a, passed_b))
    seeds, counts = max(len(a), len(b)), np.asarray(counts, np.float64)
    a, b = (np.broadcast_to(x, (seeds, counts.size)) for x in (a, b))
    if seeds == 1:
        return paired_difference(a[0], b[0], counts, replicates=replicates, seed=seed)
    full = np.broadcast_to(counts, a.shape)
    ones = np.ones_like(full)
    prompt_a, prompt_b = (a == full).astype(np.float64), (b == full).astype(np.float64)
    return {
        "prompt": seed_prompt_difference(prompt_a, prompt_b, ones, replicates=replicates, seed=seed),
        "instruction": seed_prompt_difference(a, b, full, replicates=replicates, seed=seed),
        "num_prompts": int(counts.size),
        "replicates": replicates,
        "level": 0.95,
        "seeds": seeds,
        "per_seed": [paired_difference(a[s], b[s], counts, replicates=replicates, seed=seed) for s in range(seeds)],
    }
