"""`rpo-jax train` end to end: exact resume after SIGKILL, SIGTERM, Ctrl-C, bad settings (several processes:
test_multihost.py)."""

import json
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file
from trainer_fixtures import ROOT, cli_env, run_train, train_command, write_config

pytestmark = pytest.mark.slow

TIMING_FIELDS = {"step_time", "tokens_per_s"}


def metric_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in lines]


def tensorboard_scalars(run_dir) -> dict[tuple[str, int], float]:
    """(tag, step) -> value over the run's event files in write order (the last write of a step wins, as after
    TensorBoard's purge on resume). Reads the TFRecord framing directly: no TensorFlow or TensorBoard needed."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length, its crc, payload, payload crc
            for value in event.summary.value:
                if value.HasField("simple_value"):  # not the run config's or closing summary's text
                    scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def assert_tensorboard_matches_metrics(run_dir):
    expected = {
        (k, r["step"]): v
        for r in metric_lines(run_dir)
        for k, v in r.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    got = {key: value for key, value in tensorboard_scalars(run_dir).items() if key[0] not in TIMING_FIELDS}
    assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))[:10]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key  # stored as float32


def exported_tensors(run_dir):
    return load_file(run_dir / "hf" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    config = write_config(tmp, steps=6, save_every=2, train={"trackers": ["tensorboard"]})
    result = run_train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, config


def test_run_outputs(uninterrupted):
    tmp, _ = uninterrupted
    run = tmp / "run"
    assert {"metrics.jsonl", "report.png", "hf", "checkpoints"} <= {p.name for p in run.iterdir()}
    steps = [r["step"] for r in metric_lines(run)]
    assert steps == list(range(6))
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert_tensorboard_matches_metrics(run)


def test_sigkill_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    full_tmp, _ = uninterrupted
    config = write_config(
        tmp_path, steps=6, save_every=2, data_dir=full_tmp / "data", train={"trackers": ["tensorboard"]}
    )
    proc = subprocess.Popen(
        train_command(config), env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt / "2").is_dir():
        time.sleep(0.2)
    time.sleep(float(np.random.default_rng().uniform(0.0, 3.0)))  # kill at a random point after step 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "hf").exists(), "run finished before it could be killed; slow the kill"
    result = run_train(config, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric_lines(tmp_path / "run") == metric_lines(full_tmp / "run")
    assert_tensorboard_matches_metrics(tmp_path / "run")  # events the killed run wrote after step 2 are superseded
    full, resumed = exported_tensors(full_tmp / "run"), exported_tensors(tmp_path / "run")
    assert full.keys() == resumed.keys()
    for name in full:
        np.testing.assert_array_equal(resumed[name], full[name], err_msg=name)


def test_sigterm_saves_a_resumable_checkpoint(uninterrupted, tmp_path):
    full_tmp, _ = uninterrupted
    config = write_config(tmp_path, steps=6, save_every=100, data_dir=full_tmp / "data")
    proc = subprocess.Popen(
        train_command(config), env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    saved = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) < 6
    assert not (tmp_path / "run" / "hf").exists()  # nothing half-done is exported
    result = run_train(config, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric_lines(tmp_path / "run") == metric_lines(full_tmp / "run")


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes(uninterrupted, tmp_path):
    """The first SIGINT stops like SIGTERM (checkpoint, no export) but exits 130, as an interrupted command."""
    full_tmp, _ = uninterrupted
    config = write_config(tmp_path, steps=6, save_every=100, data_dir=full_tmp / "data")
    proc = subprocess.Popen(
        train_command(config), env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    saved = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and saved[0] < 6, saved
    assert f"SIGINT: stopped at step {saved[0]} of 6" in stderr.splitlines()[-1]
    assert stderr.splitlines()[-1].endswith("continue from it with --resume")
    assert not (tmp_path / "run" / "hf").exists()
    result = run_train(config, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric_lines(tmp_path / "run") == metric_lines(full_tmp / "run")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.global_batch_size=12", "data.global_batch_size"),
        ("train.init_checkpoint=/nonexistent/ckpt", "/nonexistent/ckpt"),
    ],
)
def test_bad_settings_fail_before_compiling(uninterrupted, tmp_path, override, message):
    full_tmp, _ = uninterrupted
    config = write_config(tmp_path, data_dir=full_tmp / "data")
    result = run_train(config, "--set", override)
    assert result.returncode != 0
    assert message in result.stderr


def test_missing_data_path_is_named(tmp_path):
    missing = {"pairs_path": "", "eval_pairs_path": "", "train_path": str(tmp_path / "nope")}
    config = write_config(tmp_path, data=missing)
    result = run_train(config)
    assert result.returncode != 0 and "data.train_path" in result.stderr


def test_unwritable_output_dir_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the output directory should be")
    config = write_config(tmp_path, train={"output_dir": str(blocker / "run")})
    result = run_train(config)
    assert result.returncode != 0 and f"train.output_dir={blocker / 'run'}: cannot write there" in result.stderr
    assert not (tmp_path / "data").exists()  # failed before tokenizing anything


def _on_full_disk(command: list[str], max_file_bytes: int) -> list[str]:
    """`command` run with files unable to grow past `max_file_bytes`: writes beyond get EFBIG, as on a full disk
    (SIGXFSZ ignored so the writer sees the error instead of being killed; an ignored signal stays ignored across
    exec). Works without root or a quota. A small exec wrapper rather than preexec_fn, which is unsafe to fork
    from this multithreaded (JAX) test process."""
    wrapper = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", wrapper, *command]


def test_failed_checkpoint_write_is_loud_and_keeps_the_previous_one(uninterrupted, tmp_path):
    full_tmp, _ = uninterrupted
    config = write_config(tmp_path, steps=6, save_every=2, data_dir=full_tmp / "data")
    assert run_train(config, "--steps", "2").returncode == 0
    step2 = tmp_path / "run" / "checkpoints" / "2"
    before = {p.relative_to(step2): p.read_bytes() for p in step2.rglob("*") if p.is_file()}
    # Metrics lines fit under 256 KiB; the step-4 checkpoint (4 MB embedding) does not.
    result = subprocess.run(
        _on_full_disk(train_command(config, "--resume", "--steps", "4"), 256 * 1024),
        env=cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    # Printed last and alone: Orbax's own tracebacks of the failed write go to checkpoint_errors.log.
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("rpo-jax train: error: ") and "saving step 4 failed" in last, result.stderr[-3000:]
    assert "the latest complete checkpoint is step 2" in last and "Traceback" not in result.stderr
    assert "Traceback" in (tmp_path / "run" / "checkpoint_errors.log").read_text()
    assert {p.relative_to(step2): p.read_bytes() for p in step2.rglob("*") if p.is_file()} == before
    result = run_train(config, "--resume")  # train.steps = 6: continues from step 2 as if nothing happened
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric_lines(tmp_path / "run") == metric_lines(full_tmp / "run")


def test_resume_refuses_changed_config(uninterrupted, tmp_path):
    full_tmp, _ = uninterrupted
    config = write_config(tmp_path, steps=2, save_every=2, data_dir=full_tmp / "data")
    assert run_train(config).returncode == 0
    result = run_train(config, "--resume", "--set", "loss.beta=0.3", "--steps", "4")
    assert result.returncode != 0 and "loss.beta" in result.stderr


def test_precomputed_reference_matches_inline(uninterrupted, tmp_path):
    """Same trajectory as the separate-reference run; the reference pass runs once, before training."""
    full_tmp, _ = uninterrupted
    config = write_config(
        tmp_path, steps=3, save_every=100, data_dir=tmp_path / "data", train={"reference_mode": "precomputed"}
    )
    result = run_train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    # Stored in the run's own folder, one file per dataset keyed by data fingerprint and reference; the shared
    # data folder is never written to.
    stored = sorted((tmp_path / "run" / "ref_logps").glob("*.npz"))
    assert len(stored) == len({p.name for p in stored}) >= 1
    assert sorted(p.name for p in (tmp_path / "data" / "train").iterdir() if "ref" in p.name) == []
    inline = metric_lines(full_tmp / "run")[:3]
    for a, b in zip(inline, metric_lines(tmp_path / "run")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)


def test_metrics_log_truncates_to_what_a_checkpoint_covers(tmp_path):
    from rpo_jax.train.run_log import MetricsLog

    log = MetricsLog(tmp_path / "m.jsonl", enabled=True)
    for record in [
        {"step": 0, "loss": 1},
        {"step": 1, "loss": 1},
        {"step": 2, "eval/loss": 1},
        {"step": 2, "loss": 1},
        {"step": 3, "loss": 1},
    ]:
        log.write(record)
    log.truncate_to(2)  # the checkpoint after 2 steps: steps 0 and 1, and the eval run after them
    assert log.read() == [{"step": 0, "loss": 1}, {"step": 1, "loss": 1}, {"step": 2, "eval/loss": 1}]
