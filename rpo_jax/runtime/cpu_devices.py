"""Simulated CPU devices for compiling a mesh this machine does not have (`rpo-jax plan`).

XLA creates its CPU devices once, when JAX first initialises its backends, from
`XLA_FLAGS=--xla_force_host_platform_device_count=N`. `ensure_cpu_devices` therefore sets that flag itself when
JAX is not initialised yet; when it already is with fewer CPU devices (e.g. inside a test process), the caller
must re-run in a fresh interpreter (`rerun_with_cpu_devices`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(flags: str, count: int) -> str:
    """`flags` (an XLA_FLAGS value) with the CPU device count set to `count`."""
    flags = re.sub(rf"{DEVICE_COUNT_FLAG}=\d+", "", flags)
    return f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()


def ensure_cpu_devices(count: int) -> bool:
    """True when this process has (or, JAX not yet initialised, will have) at least `count` CPU devices."""
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = with_device_count(os.environ.get("XLA_FLAGS", ""), count)
    import jax

    return len(jax.devices("cpu")) >= count


def rerun_with_cpu_devices(count: int, cli_argv: list[str]) -> int:
    """Runs `rpo-jax *cli_argv` in a fresh interpreter with `count` CPU devices; returns its exit code."""
    import jax

    env = {**os.environ, "XLA_FLAGS": with_device_count(os.environ.get("XLA_FLAGS", ""), count)}
    print(f"re-running with {count} simulated CPU devices ({len(jax.devices('cpu'))} exist here)", flush=True)
    return subprocess.run([sys.executable, "-m", "rpo_jax.cli", *cli_argv], env=env).returncode
