"""Host memory of the `rpo-jax` process: freed large buffers go back to the OS.

glibc's malloc serves a block above `M_MMAP_THRESHOLD` (128 KiB at start) with its own mmap, unmapped on free; but
the first time such a block is freed it raises the threshold to that block's size (up to 32 MiB). From then on
XLA:CPU's per-step temporaries (hundreds of blocks of one to a few MiB) come from the heap, where freed space stays
resident and fragments. Measured on the Llama-3-vocabulary bench workload (docs/benchmarks.md): peak RSS grew by
about 15 MiB a step and reached 3.80 GiB after 6 steps; with the threshold fixed at 128 KiB (as
`MALLOC_MMAP_THRESHOLD_=131072` would; setting it also turns the dynamic raise off), 3.70 GiB, at the same MFU.
The price is a page fault per fresh block: 20-step `tiny_rpo` CLI runs took 73.6-82.3 s with it and 70.0-81.7 s
without (4 each, alternating; medians 79.9 vs 74.7 s), so small steps may be ~5% slower (within this machine's
noise). To opt out, set `MALLOC_MMAP_THRESHOLD_` yourself (33554432 is near where glibc's dynamic threshold ends
up). Accelerator memory has its own allocator and is not affected.

Decoding pays far more: a one-token step's matmuls allocate and free blocks of a few MiB on every call, each then
a fresh mmap with its page faults. `rpo-jax generate` on SmolLM2-135M (64 IFEval prompts, batch 32, 128 tokens)
took 106 s with 48 s of system time with the threshold fixed, 78 s with 4 s without (setting the variable to 32 MiB
did not help: 42 s of system time, since a fixed threshold also fixes glibc's heap trim threshold). So the
commands that mostly decode (`rpo_jax.cli.DECODING_COMMANDS`: generate, serve, eval, experiment, and
`bench --compare generate`) leave glibc's dynamic threshold alone; training commands fix it.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, kept fixed
USER_SETTING = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at start; a user's own choice wins


def keep_large_buffers_mmapped() -> bool:
    """Fixes glibc's mmap threshold for this process; True if it took. Nothing changes off glibc/Linux (no
    `mallopt`) or when the user set `MALLOC_MMAP_THRESHOLD_`."""
    if not sys.platform.startswith("linux") or USER_SETTING in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc; musl has none
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
