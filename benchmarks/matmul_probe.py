"""A measured matmul peak: the FLOP/s this device reaches on one large matmul, the denominator of a measured MFU.

The probe runs in the bench's own process, so with the step's dtype and the same XLA thread pool (on CPU: the
threads this process may use). A peak is what the device can do, so it is the FASTEST run, not the median: a run
slowed by other load on a shared machine under-measures the peak and pushes MFU up, once past 100 % (issue 33: a
median of 26 GFLOP/s between steps on a machine whose fp32 matmul reaches ~177). `measure_until_stable` repeats the
probe until its best time stops improving.
"""

from __future__ import annotations

import statistics
import time


def make_matmul_probe(device, dtype: str, size: int):
    """A compiled, warmed-up `[size,size]@[size,size]` matmul in `dtype` on `device`; calling it returns its time."""
    import jax
    import jax.numpy as jnp

    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.device_put(jax.random.normal(k, (size, size), jnp.float32).astype(jdtype), device) for k in keys)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jdtype))
    jax.block_until_ready(matmul(a, b))

    def probe() -> float:
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        return time.perf_counter() - start

    probe.flops = 2.0 * size**3
    return probe


def matmul_peak(probe, times: list[float]) -> dict:
    """FLOP/s of the probe's fastest run among `times` (and of the median run, to show the spread)."""
    best, median = min(times), statistics.median(times)
    return {
        "best_s": best,
        "median_s": median,
        "flops_per_s": probe.flops / best,
        "median_flops_per_s": probe.flops / median,
        "samples": len(times),
    }


def measure_until_stable(probe, window: int = 5, tolerance: float = 0.02, max_runs: int = 60) -> dict:
    """Runs the probe until `window` runs in a row leave its best time within `tolerance` of where it was (at
    most `max_runs`); the peak is that best time's FLOP/s. `stable` says whether it settled."""
    times = [probe() for _ in range(window)]
    best_before = min(times)
    while len(times) < max_runs:
        times += [probe() for _ in range(window)]
        best = min(times)
        if best >= best_before * (1.0 - tolerance):
            return {**matmul_peak(probe, times), "stable": True}
        best_before = best
    return {**matmul_peak(probe, times), "stable": False}
