"""`launch/gpu_single.sh`: the commands it prints and runs, and that its default XLA flags are known to jaxlib."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launch_fixtures import FAKE_RPO_JAX, GPU, REPO, _executable, _printed, _run


def test_gpu_dry_run_prints_flags_and_resume(fake_env):
    data = ["--data", "/data/tok", "--eval-data", "/data/tok-eval"]
    result = _run(GPU, "all", "--dry-run", "--gpu", "1", *data, "--set", "loss.beta=0.2", env=fake_env)
    assert result.returncode == 0, result.stderr
    cmds = _printed(result.stdout)
    assert ["python3.11", "-m", "venv", ".venv"] in cmds
    assert [".venv/bin/python", "-m", "pip", "install", "-e", ".[cuda]"] in cmds
    (train,) = [c for c in cmds if c[0] == "env"]
    assert train[1:5] == [
        "CUDA_VISIBLE_DEVICES=1",
        "XLA_PYTHON_CLIENT_PREALLOCATE=true",
        "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
    ]
    assert train[5:] == [
        ".venv/bin/rpo-jax",
        "train",
        "--config",
        "configs/run/rpo_llama3_2_1b_lora_gpu.yaml",
        "--output-dir",
        "runs/rpo_llama3_2_1b_lora_gpu",
        "--set",
        "data.train_path=/data/tok",
        "--set",
        "data.eval_path=/data/tok-eval",
        "--set",
        "train.compilation_cache_dir=runs/rpo_llama3_2_1b_lora_gpu/jax_compilation_cache",
        "--set",
        "loss.beta=0.2",
    ]
    resume = _run(GPU, "resume", "--dry-run", "--steps", "7", env=fake_env)
    assert "rpo-jax train --config configs/run/rpo_llama3_2_1b_lora_gpu.yaml" in resume.stdout
    assert "--steps 7 --resume" in resume.stdout


def test_gpu_train_runs_trainer_with_printed_environment(fake_env, tmp_path):
    venv = tmp_path / "venv"
    _executable(venv / "bin" / "rpo-jax", FAKE_RPO_JAX)
    out = tmp_path / "trainer.json"
    env = {**fake_env, "FAKE_RPO_JAX_OUT": str(out), "RPO_MEM_FRACTION": "0.7", "XLA_FLAGS": "--xla_dump_to=/x"}
    result = _run(GPU, "resume", "--venv", str(venv), "--output-dir", "/tmp/o", env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"] == [
        "train",
        "--config",
        "configs/run/rpo_llama3_2_1b_lora_gpu.yaml",
        "--output-dir",
        "/tmp/o",
        "--resume",
        "--set",
        "train.compilation_cache_dir=/tmp/o/jax_compilation_cache",
    ]
    assert seen["cwd"] == str(REPO)
    assert seen["env"] == {
        "LIBTPU_INIT_ARGS": None,
        "TPU_STDERR_LOG_LEVEL": None,
        "TPU_MIN_LOG_LEVEL": None,
        "CUDA_VISIBLE_DEVICES": "0",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.7",
        "XLA_FLAGS": "--xla_dump_to=/x --xla_gpu_enable_latency_hiding_scheduler=true",
        "JAX_COMPILATION_CACHE_DIR": None,  # the trainer applies train.compilation_cache_dir itself
    }


def _xla_accepts(flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    code = "import jax.numpy as jnp; jnp.ones(2).block_until_ready()"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_gpu_default_xla_flags_are_known_to_jaxlib(fake_env):
    """XLA aborts on an unknown XLA_FLAGS entry; jaxlib's flag table covers the GPU flags too."""
    result = _run(GPU, "train", "--dry-run", env=fake_env)
    (flags,) = [w.removeprefix("XLA_FLAGS=") for c in _printed(result.stdout) for w in c if w.startswith("XLA_FLAGS=")]
    assert _xla_accepts(flags).returncode == 0
    assert _xla_accepts("--xla_gpu_no_such_flag_for_rpo_jax=true").returncode != 0  # the check can fail
