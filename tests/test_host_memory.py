"""`rpo_jax.runtime.host_memory`: with the mmap threshold fixed, freed MiB-sized blocks (XLA:CPU's step temporaries)
leave resident memory even when they sit between live ones; with glibc's dynamic threshold they stay resident."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, sys
from rpo_jax.runtime.host_memory import keep_large_buffers_mmapped
if sys.argv[1] == "fixed":
    assert keep_large_buffers_mmapped()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MIB = 1 << 20
def rss_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
libc.free(libc.malloc(MIB))  # glibc raises its threshold on the first free of an mmapped block
blocks = [libc.malloc(MIB) for _ in range(200)]
for block in blocks:
    ctypes.memset(block, 1, MIB)
before = rss_kib()
for block in blocks[::2]:  # holes between live blocks: a heap cannot give them back
    libc.free(block)
print((before - rss_kib()) // 1024)
"""


def released_mib(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_leave_resident_memory_only_with_the_fixed_threshold():
    assert released_mib("fixed") >= 90  # 100 MiB freed
    assert released_mib("default") <= 10


def test_a_users_own_setting_wins(monkeypatch):
    from rpo_jax.runtime.host_memory import keep_large_buffers_mmapped

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert keep_large_buffers_mmapped() is False


def test_decoding_commands_keep_the_dynamic_threshold():
    from argparse import Namespace

    from rpo_jax.cli import decodes

    assert all(decodes(name, Namespace()) for name in ("generate", "serve", "eval", "experiment"))
    assert decodes("bench", Namespace(compare=["generate"]))
    assert not any(decodes(name, Namespace(compare=["trl"])) for name in ("train", "precompute-ref", "bench"))
