"""Several `rpo-jax` CLI processes on one machine: each gets 4 simulated CPU devices and the RPO_JAX_* variables
that make them one JAX job (coordinator on a free local port), the way hosts of a TPU pod or a GPU cluster do."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from trainer_fixtures import ROOT, cli_env

TINY_RPO = ROOT / "configs/run/tiny_rpo.yaml"
TIMING_FIELDS = {"step_time", "tokens_per_s"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, devices: int = 4, **extra) -> dict:
    return cli_env(
        devices=devices,
        RPO_JAX_COORDINATOR=f"127.0.0.1:{port}",
        RPO_JAX_NUM_PROCESSES=num_processes,
        RPO_JAX_PROCESS_ID=process_id,
        **extra,
    )


def start(args: list[str], num_processes: int = 2, *, port: int | None = None, **extra) -> list[subprocess.Popen]:
    """`rpo-jax ARGS` as `num_processes` processes of one job (stdout and stderr captured)."""
    port = port or free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "rpo_jax.cli", *args],
            cwd=ROOT,
            env=process_env(i, num_processes, port, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num_processes)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    """Waits for every process; returns (returncode, stdout, stderr) of each. Kills the rest when one hangs."""
    deadline = time.time() + timeout
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(deadline - time.time(), 1))
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def run_all(args: list[str], num_processes: int = 2, timeout: float = 600, **extra) -> list[tuple[int, str, str]]:
    results = finish(start(args, num_processes, **extra), timeout)
    for i, (code, _, err) in enumerate(results):
        assert code == 0, f"process {i} exited {code}:\n{err[-3000:]}"
    return results


def run_one(args: list[str], devices: int = 8, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "rpo_jax.cli", *args],
        cwd=ROOT,
        env=cli_env(devices=devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metric_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in lines]


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
