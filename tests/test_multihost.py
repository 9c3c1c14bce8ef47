"""Several processes, one job (what a TPU pod or a GPU cluster runs): 2 CLI processes x 4 simulated CPU devices
train exactly like 1 process x 8 devices with the shipped run config (length buckets on, data tokenized on first
use into the shared output dir, eval at step 0), compute precomputed reference log-probs together, export the same
safetensors, and refuse a bad process setup in one line. Stopping together when one of them gets SIGTERM, within a
step: tests/test_stop_within_notice.py; then resuming to the uninterrupted run's end: tests/test_bucket_runs.py."""

import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from multihost_fixtures import (
    TINY_RPO,
    finish,
    free_port,
    metric_lines,
    process_env,
    run_all,
    run_one,
    start,
)
from safetensors.numpy import load_file
from trainer_fixtures import ROOT

pytestmark = pytest.mark.slow

# tiny_rpo.yaml's length buckets are on, as shipped: a process's own half of a global batch may fit a smaller bucket
# than the whole batch, and the processes must pad to the global batch's bucket (with the default pairs until
# 2026-12-07 that happened at steps 0, 1, 3 and 5; test_loader.py's test_every_process_pads_to_the_global_batchs_bucket
# checks the rule itself).
STEPS = 8


def train_args(run_dir, *extra: str) -> list[str]:
    return ["train", "--config", str(TINY_RPO), "--output-dir", str(run_dir), "--steps", str(STEPS), *extra]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    run_one(train_args(run))
    return run


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    run = tmp_path_factory.mktemp("two") / "run"
    results = run_all(train_args(run))
    return run, results


def assert_same_run(one: list[dict], two: list[dict]) -> None:
    """Losses within 5e-5 relative; reward margins (differences of summed log-probs of hundreds of nats, so
    near 0 early on) within 1e-4 absolute. Both tolerances cover fp32 drift from the different reduction order
    of a cross-process all-reduce: at step 7 of tiny_rpo (rows of up to 512 tokens: the default pairs until
    2026-12-07) 1.5e-5 relative on the loss and 2.1e-5 absolute on a margin of -0.0077 (sums of ~1,700 nats each), under
    1e-5 before; a wrong example on a process or a wrong reference row moves the loss by orders of magnitude more."""
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key, tolerance in (("loss", {"rel": 5e-5}), ("rewards/margins", {"abs": 1e-4})):
            for name in (key, f"eval/{key}"):
                if name in a:
                    assert b[name] == pytest.approx(a[name], **tolerance), (a["step"], name)


def exported(run_dir) -> dict[str, np.ndarray]:
    return load_file(run_dir / "hf" / "model.safetensors")


def test_two_processes_match_one_with_length_buckets(one_process, two_processes):
    """Both processes pad each step to the global batch's bucket and read the data process 0 tokenized; the
    losses (and the step-0 held-out eval) equal one process's."""
    run, results = two_processes
    assert (run / "data" / "train" / "manifest.json").is_file()
    for i, (_, out, _) in enumerate(results):
        assert f"rpo-jax: process {i} of 2 on " in out  # one line per host says which process it is
    assert [out.count("tokenized ") for _, out, _ in results] == [2, 0]  # train + eval, by process 0 only
    assert_same_run(metric_lines(one_process), metric_lines(run))
    assert_close_weights(one_process, run)


def assert_close_weights(one_run, two_run) -> None:
    """Each exported tensor within 1e-3 relative (Frobenius norm): one process and two reduce in another order,
    and Adam turns last-bit differences of a gradient that is ~0 into updates of ~learning rate on a few of
    millions of entries, so weights are compared loosely; the losses above are the tight check."""
    one, two = exported(one_run), exported(two_run)
    assert one.keys() == two.keys()
    for name in one:
        assert np.linalg.norm(two[name] - one[name]) <= 1e-3 * np.linalg.norm(one[name]), name


def test_precomputed_reference_with_two_processes_matches_one(one_process, tmp_path):
    """Both processes run the reference pass over the train and eval data together (process 0 stores it) and
    train on it. Two steps suffice: a reference row given to the wrong example shows in the step-0 rewards
    (checked by the trainer, policy == reference) and in every loss; later steps only repeat the same lookup."""
    run = tmp_path / "run"
    # Warm-up of 1 step as in the 8-step run (learning rate 0 at step 0), so steps 0 and 1 compare.
    settings = ["--set", "train.reference_mode=precomputed", "--set", "optim.warmup_ratio=0.5"]
    run_all(["train", "--config", str(TINY_RPO), "--output-dir", str(run), "--steps", "2", *settings])
    assert len(list((run / "ref_logps").glob("*.npz"))) == 2  # train and eval
    lines = metric_lines(run)
    assert_same_run(metric_lines(one_process)[:3], lines[:3])  # eval at step 0, steps 0 and 1
    assert [line["step"] for line in lines[3:]] == [2] and "eval/loss" in lines[3]  # the final model's eval


@pytest.fixture(scope="module")
def sharded_lora_checkpoint(tmp_path_factory):
    """A params checkpoint saved from 8 devices (fsdp 4 x tensor 2) with LoRA factors, and its HF export from
    this one process."""
    from llama_hf_fixtures import tiny_config

    from rpo_jax.config.schema import LoraConfig, MeshConfig
    from rpo_jax.io.hf_export import export_hf
    from rpo_jax.io.params import save_params
    from rpo_jax.model.llama import Llama
    from rpo_jax.runtime.sharding import make_mesh, state_shardings

    tmp = tmp_path_factory.mktemp("export")
    cfg, lora = tiny_config(gqa=True), LoraConfig(rank=2, alpha=4.0)
    model = Llama(cfg, lora, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    for name in model.layers.lora_names:  # non-zero adapters, so the merge shows in the export
        b = getattr(model.layers, f"lora_b_{name}")
        b[...] = jax.numpy.asarray(0.05 * rng.standard_normal(b.shape), b.dtype)
    state = nnx.state(model)
    state = jax.device_put(state, state_shardings(state, make_mesh(MeshConfig(fsdp=4, tensor=2))))
    save_params(tmp / "ckpt", state, cfg, lora)
    export_hf(state, cfg, lora, tmp / "hf_one", max_shard_bytes=60_000)
    return tmp


def test_export_and_import_from_two_processes_write_what_one_does(sharded_lora_checkpoint):
    """export-hf streams one tensor at a time to process 0, which writes the shards + index; import-hf's
    save_params writes each process's shards. Both give what one process gives."""
    from rpo_jax.config.schema import MeshConfig
    from rpo_jax.io.hf import load_hf_state
    from rpo_jax.io.params import load_params_checkpoint
    from rpo_jax.runtime.sharding import make_mesh

    tmp, mesh = sharded_lora_checkpoint, ["--mesh", "data=1,fsdp=4,tensor=2"]
    size = ["--max-shard-size", "60000"]
    run_all(["export-hf", "--checkpoint", str(tmp / "ckpt"), "--output", str(tmp / "hf_two"), *size, *mesh])
    one = sorted(p.name for p in (tmp / "hf_one").iterdir())
    assert one == sorted(p.name for p in (tmp / "hf_two").iterdir())
    assert "model.safetensors.index.json" in one and len(one) == 4
    for name in one:
        assert (tmp / "hf_two" / name).read_bytes() == (tmp / "hf_one" / name).read_bytes(), name
    run_all(["import-hf", "--model", str(tmp / "hf_one"), "--output", str(tmp / "ckpt_two"), *mesh])
    mesh_8 = make_mesh(MeshConfig(fsdp=4, tensor=2))
    _, _, imported = load_params_checkpoint(tmp / "ckpt_two", mesh_8)
    _, reference = load_hf_state(tmp / "hf_one", mesh_8)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(imported), nnx.to_pure_dict(reference))


def _cli(process_id, num_processes, port, tmp_path, timeout_s=3):
    return subprocess.Popen(
        [sys.executable, "-m", "rpo_jax.cli", "train", "--config", str(TINY_RPO), "--output-dir", str(tmp_path)],
        cwd=ROOT,
        env=process_env(process_id, num_processes, port, RPO_JAX_INIT_TIMEOUT=timeout_s),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rpo-jax train: error: "), err[-3000:]
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    "setup, needles",
    [
        ([(2, 2)], ["RPO_JAX_PROCESS_ID=2", "ids run from 0 to 1"]),
        ([(1, 2)], ["did not answer within 3 s"]),  # process 0 never started
        ([(0, 3), (1, 3)], ["only 2 of 3 processes", "missing process ids [2]"]),
        ([(0, 2), (1, 3)], ["says there are 3 processes, process 0 says 2"]),
    ],
    ids=["id-out-of-range", "no-coordinator", "too-few-processes", "counts-differ"],
)
def test_bad_process_setup_is_one_line_within_the_timeout(tmp_path, setup, needles):
    port, began = free_port(), time.time()
    procs = [_cli(i, n, port, tmp_path) for i, n in setup]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        _one_line_error(proc.returncode, err, *needles)
    assert time.time() - began < 60  # the 3 s timeout plus start-up, not JAX's 300 s nor a hang
    assert not (tmp_path / "data").exists()  # stopped before tokenizing


def test_a_data_error_on_process_0_stops_every_process_in_one_line(tmp_path):
    """Process 0 tokenizes on first use; when the pair file is bad, the others stop too (they would otherwise
    wait for data that never comes), each with one line."""
    bad = tmp_path / "bad_pairs.jsonl"
    bad.write_text('{"id": "x"}\n')
    procs = start(
        ["train", "--config", str(TINY_RPO), "--output-dir", str(tmp_path / "run")]
        + ["--set", f"data.pairs_path={bad}"],
        RPO_JAX_INIT_TIMEOUT=60,
    )
    (code0, _, err0), (code1, _, err1) = finish(procs, timeout=300)
    assert code0 == 2 and str(bad) in err0.strip().splitlines()[-1], err0[-3000:]
    _one_line_error(code1, err1, "process 0 could not prepare the run's data", str(bad))
