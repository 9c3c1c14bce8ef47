"""A measured matmul peak: the FLOP/s this device reaches on one large matmul, to put MFU numbers in context."""

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
    median = statistics.median(times)
    return {"median_s": median, "flops_per_s": probe.flops / median, "samples": len(times)}


def measure_matmul_peak(probe, repeats: int = 5) -> dict:
    """FLOP/s of the probe matmul: median of `repeats` back-to-back runs."""
    return matmul_peak(probe, [probe() for _ in range(repeats)])
