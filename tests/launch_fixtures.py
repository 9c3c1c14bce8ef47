"""Fakes for the launch-script tests: `gcloud`/`git` and the `rpo-jax` console script replaced by executables that
record their argv, so tests check both what a `--dry-run` prints and what a real run executes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU = LAUNCH / "tpu_pod.sh"
GPU = LAUNCH / "gpu_single.sh"
SCRIPTS = [TPU, GPU, LAUNCH / "common.sh"]

# Records its argv as one JSON line; `describe` prints $FAKE_TPU_STATE (or fails when it is empty, like a
# missing slice); queued-resources describe reports ACTIVE.
FAKE_TOOL = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if "describe" in sys.argv:
    if "queued-resources" in sys.argv:
        print("ACTIVE")
    elif os.environ.get("FAKE_TPU_STATE"):
        print(os.environ["FAKE_TPU_STATE"])
    else:
        sys.exit(1)
"""

# Stands in for the installed console script: records argv and the environment JAX reads.
FAKE_RPO_JAX = """#!/usr/bin/env python3
import json, os, sys
keys = ["LIBTPU_INIT_ARGS", "TPU_STDERR_LOG_LEVEL", "TPU_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES",
        "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR"]
with open(os.environ["FAKE_RPO_JAX_OUT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}, f)
print("fake trainer ran")
"""


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_environment(tmp_path: Path) -> dict[str, str]:
    """Environment with fake gcloud/git first on PATH and no inherited RPO_* / XLA_FLAGS settings (the `fake_env`
    fixture of conftest.py)."""
    bin_dir = tmp_path / "bin"
    for tool in ("gcloud", "git"):
        _executable(bin_dir / tool, FAKE_TOOL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPO_", "XLA_", "TPU_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_CALLS"] = str(tmp_path / "calls.jsonl")
    return env


def _run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def _calls(env) -> list[list[str]]:
    path = Path(env["FAKE_CALLS"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _printed(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _remote(cmd: list[str]) -> str:
    (arg,) = [a for a in cmd if a.startswith("--command=")]
    return arg.removeprefix("--command=")
