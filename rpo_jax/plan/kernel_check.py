"""The fused attention kernel of an accelerator against `blockwise` attention: outputs and q/k/v gradients.

`rpo-jax doctor` runs this first on a GPU (cuDNN flash attention) or a TPU (Pallas splash attention): the trainer's
`model.attention=auto` picks those kernels there, and the test suite can only check them in Pallas interpret mode
(splash) or not at all (cuDNN). Both sides read the same bfloat16 q, k, v (cuDNN has no float32 kernel) with the
model's head layout, under two masks the trainer feeds: right-padded rows (`padded`) and rows of several packed
sequences then padding (`packed`, `data.packing`; cuDNN runs it through segment offsets, Hopper or newer).

The error of a tensor is max |kernel − blockwise| / max |blockwise| over real (non-padding) positions; the
gradients are those of sum(out · w) for a random cotangent w that is zero on padding (what padding outputs hold
is the kernel's business: nothing reads them). Two correct bfloat16 implementations differ by about 5e-3
(xla against blockwise on CPU, 1B-model heads, T = 1024: at most 4.7e-3 on outputs and 7.1e-3 on gradients),
so the tolerances below leave 3-4x room for rounding while a mask or scale mistake shows at 1e-1 or more.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rpo_jax.model.attention import AttentionMask, attend

FUSED_KERNEL = {"gpu": "cudnn", "tpu": "splash"}
REFERENCE = "blockwise"
DTYPE = "bfloat16"
FORWARD_TOLERANCE = 2e-2
GRADIENT_TOLERANCE = 3e-2
CASES = {
    "padded": "one sequence per row; row 2 right-padded from 3/4 of the length",
    "packed": "three packed sequences of unequal lengths per row, then padding",
}
BATCH = 2
TIMED_RUNS = 5


def case_segments(case: str, length: int) -> tuple[np.ndarray, int]:
    """([BATCH, length] segment ids with 0 = padding, most sequences in one row) of a case of `CASES`."""
    seg = np.zeros((BATCH, length), np.int32)
    if case == "padded":
        seg[0] = 1
        seg[1, : 3 * length // 4] = 1
        return seg, 1
    for row in range(BATCH):
        cuts = (0, length // 5 + row * length // 16, length // 2, length - length // 8 - row)
        for index in range(3):
            seg[row, cuts[index] : cuts[index + 1]] = index + 1
    return seg, 3


def attention_inputs(heads: int, kv_heads: int, head_dim: int, seg: np.ndarray, device, seed: int = 0):
    """Random bfloat16 (q, k, v) [B, T, N, Dh] and the float32 cotangent w, zero where the segment id is 0."""
    rng = np.random.default_rng(seed)
    B, T = seg.shape
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, head_dim)), DTYPE) for n in (heads, kv_heads, kv_heads))
    w = rng.normal(size=(B, T, heads, head_dim)) * (seg != 0)[:, :, None, None]
    return jax.device_put((q, k, v, jnp.asarray(w, jnp.float32)), device)


def output_and_grads(attention: Callable, q, k, v, w) -> tuple[Callable, tuple]:
    """(the jitted function, its result: output and d(sum(out · w))/d(q, k, v))."""

    def objective(q, k, v):
        out = attention(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w), out

    fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))
    (_, out), grads = jax.block_until_ready(fn(q, k, v))
    return fn, (out, *grads)


def median_ms(fn: Callable, *args) -> float:
    times = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def relative_error(got, want, real: np.ndarray | None = None) -> float:
    """max |got − want| / max |want|, over the positions where `real` ([B, T]) holds when given."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if real is not None:
        got, want = got[real], want[real]
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def compare_attention(
    kernel: Callable, reference: Callable, shape: dict, seg: np.ndarray, device, *, timed: bool = True
) -> dict:
    """Errors of `kernel` against `reference` (each `(q, k, v) -> out`) on one mask, their median fwd+bwd times,
    and whether both tolerances hold. `shape` holds heads, kv_heads and head_dim."""
    q, k, v, w = attention_inputs(shape["heads"], shape["kv_heads"], shape["head_dim"], seg, device)
    kernel_fn, got = output_and_grads(kernel, q, k, v, w)
    reference_fn, want = output_and_grads(reference, q, k, v, w)
    forward = relative_error(got[0], want[0], seg != 0)
    gradients = {name: relative_error(g, r) for name, g, r in zip("qkv", got[1:], want[1:])}
    result = {
        "forward_error": forward,
        "gradient_errors": gradients,
        "passed": forward <= FORWARD_TOLERANCE and max(gradients.values()) <= GRADIENT_TOLERANCE,
    }
    if timed:
        result["kernel_fwd_bwd_ms"] = median_ms(kernel_fn, q, k, v)
        result["reference_fwd_bwd_ms"] = median_ms(reference_fn, q, k, v)
    return result


def attention_fn(impl: str, mask: AttentionMask, scale: float, interpret: bool) -> Callable:
    return lambda q, k, v: attend(impl, q, k, v, mask, scale=scale, interpret=interpret)


def check_kernel(impl: str, shape: dict, length: int, device, *, interpret: bool = False) -> dict:
    """`impl` (cudnn, splash; xla stands in on CPU) against blockwise on every case of `CASES`, at the model's
    heads (`shape`) and `length` tokens per row. A case whose kernel raises (an older GPU without cuDNN's packed
    layout, a kernel that does not compile) is reported as failed with the error, and the other cases still run."""
    scale = shape["head_dim"] ** -0.5
    cases = []
    for case, description in CASES.items():
        seg, max_segments = case_segments(case, length)
        mask = AttentionMask(jax.device_put(jnp.asarray(seg), device), max_segments=max_segments)
        kernel, reference = (attention_fn(name, mask, scale, interpret) for name in (impl, REFERENCE))
        entry = {"case": case, "mask": description, "batch": BATCH, "length": length}
        try:
            entry.update(compare_attention(kernel, reference, shape, seg, device))
        except Exception as err:  # the check's job is to report a kernel that fails; the next case still runs
            entry.update(passed=False, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        cases.append(entry)
    return {
        "kernel": impl,
        "reference": REFERENCE,
        "dtype": DTYPE,
        **shape,
        "tolerance": {"forward": FORWARD_TOLERANCE, "gradients": GRADIENT_TOLERANCE},
        "cases": cases,
        "passed": all(case["passed"] for case in cases),
    }
