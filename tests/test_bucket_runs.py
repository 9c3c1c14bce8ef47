"""Runs that live in a bucket, against a real GCS emulator (fake-gcs-server, `gcs_fixtures`): the README's main job
with `--output-dir gs://BUCKET/run` writes every output there (Orbax checkpoints through TensorStore, metrics,
report, TensorBoard events, `hf/`, the compilation cache) and nothing into the working directory; two processes
stopped by SIGTERM resume from the bucket, skipping (and naming) a step checkpoint whose save never committed, and
end where the uninterrupted run did, with the compiled programs of the first attempt loaded from the bucket's
compilation cache; `export-hf` writes to the bucket a folder that transformers loads.

Kept cheap: one length bucket (one train-step compile), 4 steps, evaluation only in the one-process run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from gcs_fixtures import BUCKET
from multihost_fixtures import TINY_RPO, finish, free_port, process_env
from safetensors.numpy import load
from test_multihost import assert_same_run
from trainer_fixtures import cli_env

pytestmark = pytest.mark.slow

STEPS = 4
# One bucket, tiny_rpo.yaml's max_length: one compile of the step.
SHRINK = ["--steps", str(STEPS), "--set", "data.length_buckets=[384]"]
TIMING_FIELDS = {"step_time", "tokens_per_s"}


@pytest.fixture(scope="module")
def emulator(gcs_emulator):
    return gcs_emulator


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """An empty working directory for the commands, and a cache folder outside it (XDG_CACHE_HOME)."""
    return tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("cache")


def env_for(emulator, places, process: int | None = None, port: int = 0, **extra) -> dict:
    common = {**emulator.env(), "XDG_CACHE_HOME": str(places[1]), **extra}
    return cli_env(**common) if process is None else process_env(process, 2, port, **common)


def rpo_jax(args: list[str], env: dict, cwd, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rpo_jax.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def train_args(run: str, *extra: str) -> list[str]:
    return ["train", "--config", str(TINY_RPO), "--output-dir", f"gs://{BUCKET}/{run}", *SHRINK, *extra]


def metrics(emulator, run: str) -> list[dict]:
    text = emulator.read(f"{run}/metrics.jsonl").decode()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_FIELDS} for x in text.splitlines()]


def committed_steps(emulator, run: str) -> list[int]:
    names = emulator.names(f"{run}/checkpoints/")
    return sorted(int(n.split("/")[2]) for n in names if n.endswith("/commit_success.txt") and n.count("/") == 3)


@pytest.fixture(scope="module")
def one_process(emulator, places):
    """The main job, one process, TensorBoard on, into gs://BUCKET/one."""
    proc = rpo_jax(train_args("one", "--set", "train.trackers=[tensorboard]"), env_for(emulator, places), places[0])
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_the_main_job_writes_every_output_into_the_bucket(emulator, places, one_process):
    names = emulator.names("one/")
    top = {n.split("/")[1] for n in names}
    outputs = {"checkpoints", "metrics.jsonl", "report.png", "tensorboard", "hf", "jax_compilation_cache"}
    assert outputs <= top <= outputs | {"trackers.json"}, top
    assert committed_steps(emulator, "one") == [STEPS]
    assert emulator.read("one/report.png").startswith(b"\x89PNG")
    assert any(n.startswith("one/tensorboard/events.out.tfevents.") for n in names)
    assert {"one/hf/config.json", "one/hf/model.safetensors", "one/hf/chat_template.jinja"} <= set(names)
    records = metrics(emulator, "one")
    assert [r["step"] for r in records if "loss" in r] == list(range(STEPS))
    assert [r["step"] for r in records if "eval/loss" in r] == [0, STEPS]
    assert f"checkpoint:   gs://{BUCKET}/one/checkpoints/{STEPS}" in one_process
    assert list(places[0].iterdir()) == []  # nothing in the working directory; the tokenized data is cached
    assert list((places[1] / "rpo-jax" / "tokenized").iterdir())


def test_two_processes_stopped_by_sigterm_resume_from_the_bucket(emulator, places, one_process):
    """SIGTERM to process 1 stops both after a checkpoint in the bucket. A later step whose save never committed
    (its files, without Orbax's commit_success.txt) is named and set aside by --resume, which then ends where the
    uninterrupted one-process run did (within the tolerance of 2 processes against 1, `assert_same_run`) and loads
    the first attempt's compiled programs from the bucket's cache."""
    port, run = free_port(), "two"
    args = train_args(run, "--set", "train.eval_every=0")
    procs = [rpo_jax(args, env_for(emulator, places, i, port), places[0]) for i in range(2)]
    deadline = time.time() + 900
    # The first compiled program in the bucket's cache: the run is compiling, and a stop now comes at step 1 or 2.
    while time.time() < deadline and not emulator.names(f"{run}/jax_compilation_cache/"):
        assert all(p.poll() is None for p in procs), finish(procs)
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    for code, _, err in finish(procs, timeout=300):
        assert code == 0, err[-3000:]
    (stopped,) = committed_steps(emulator, run)
    assert stopped < STEPS

    half = stopped + 1  # a save cut off before it committed: the files of a step, no commit marker
    for name in emulator.names(f"{run}/checkpoints/{stopped}/"):
        if not name.endswith("commit_success.txt"):
            emulator.write(name.replace(f"/checkpoints/{stopped}/", f"/checkpoints/{half}/"), emulator.read(name))

    debug_cache = {"JAX_LOG_COMPILES": "1"}  # logs each persistent-cache hit as a warning
    port = free_port()
    procs = [
        rpo_jax([*args, "--resume"], env_for(emulator, places, i, port, **debug_cache), places[0]) for i in range(2)
    ]
    results = finish(procs, timeout=1200)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    out, err = results[0][1], results[0][2]
    assert f"skipped step {half} in gs://{BUCKET}/{run}/checkpoints" in out
    assert f"resumed from step {stopped} of {STEPS}" in out
    assert emulator.names(f"{run}/set_aside_checkpoints/{half}/")
    assert committed_steps(emulator, run) == [stopped, STEPS]
    assert "Persistent compilation cache hit" in err
    train_lines = [r for r in metrics(emulator, "one") if "loss" in r]
    assert_same_run(train_lines, metrics(emulator, run))
    assert emulator.names(f"{run}/hf/config.json")
    assert list(places[0].iterdir()) == []


def test_export_hf_to_the_bucket_loads_in_transformers(emulator, places, one_process, tmp_path):
    """A step checkpoint in the bucket exported to the bucket: the same tensors as the run's own hf/, and
    transformers loads the downloaded folder."""
    source, target = f"gs://{BUCKET}/one/checkpoints/{STEPS}", f"gs://{BUCKET}/exported"
    proc = rpo_jax(["export-hf", "--checkpoint", source, "--output", target], env_for(emulator, places), places[0])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    names = emulator.names("exported/")
    assert "exported/config.json" in names and "exported/model.safetensors" in names
    exported, trained = (load(emulator.read(f"{run}/model.safetensors")) for run in ("exported", "one/hf"))
    assert exported.keys() == trained.keys()
    for name in trained:
        np.testing.assert_array_equal(exported[name], trained[name], err_msg=name)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(emulator.download("exported", tmp_path / "hf"))
    assert model.config.num_hidden_layers == json.loads(emulator.read("exported/config.json"))["num_hidden_layers"]
