"""`rpo-jax train` on a mixture (`data.sources`: the shipped RPO pair file + an imported hh-rlhf set, tokenized)
with length buckets, mirror grouping and every tracker on: a run stopped and resumed equals an uninterrupted one,
mixture.json and the closing summary give the realised proportions, the trackers hold the run; a source with a
bad row names itself, its file, row and field."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from trainer_fixtures import DEFAULT_PAIRS, ROOT, TOKENIZER, cli_env, run_train, write_config

from data_pipeline.pairs import cli as build_pairs
from data_pipeline.records.build import build_shards
from data_pipeline.records.truncation import TruncationSettings

pytestmark = pytest.mark.slow

TIMING_FIELDS = {"step_time", "tokens_per_s"}
HH_SLICE = ROOT / "data_pipeline/assets/prefs/hh-rlhf-harmless-base-test-slice.jsonl.gz"


@pytest.fixture(scope="module")
def general_shards(tmp_path_factory):
    """The general preference set: the hh-rlhf slice imported by `build-pairs --recipe dpo`, then tokenized."""
    root = tmp_path_factory.mktemp("general")
    parser = argparse.ArgumentParser()
    build_pairs.add_arguments(parser)
    args = ["--recipe", "dpo", "--input", str(HH_SLICE), "--output", str(root / "pairs"), "--skip-bad"]
    assert build_pairs.run(parser.parse_args(args)) == 0
    build_shards(root / "pairs" / "pairs.jsonl", TOKENIZER, root / "shards", TruncationSettings(256, "drop"))
    return root / "shards"


def mixture_config(tmp, general_shards, steps: int, sources=None):
    sources = sources or [
        {"path": str(DEFAULT_PAIRS / "pairs.jsonl"), "weight": 0.7},
        {"path": str(general_shards), "weight": 0.3},
    ]
    return write_config(
        tmp,
        steps=steps,
        save_every=2,
        data={
            "pairs_path": "",
            "train_path": "",
            "sources": sources,
            "length_buckets": [128, 256],
            "group_mirrors": True,
        },
        # One compilation cache for the three runs: the later ones load the programs the first compiled.
        train={"trackers": ["tensorboard", "wandb", "trackio"], "compilation_cache_dir": str(tmp.parent / "jax_cache")},
    )


def env(tmp):
    return cli_env(WANDB_MODE="offline", WANDB_SILENT="true", TRACKIO_DIR=str(tmp / "trackio_store"))


def metric_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in lines]


def test_a_resumed_mixture_run_equals_an_uninterrupted_one(tmp_path, general_shards):
    full, parts = tmp_path / "full", tmp_path / "parts"
    full.mkdir(), parts.mkdir()
    result = run_train(mixture_config(full, general_shards, steps=4), env=env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    first = run_train(mixture_config(parts, general_shards, steps=2), env=env(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_train(mixture_config(parts, general_shards, steps=4), "--resume", env=env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert metric_lines(parts / "run") == metric_lines(full / "run")
    assert [r["step"] for r in metric_lines(full / "run")] == [0, 1, 2, 3]
    from safetensors.numpy import load_file

    want, got = load_file(full / "run/hf/model.safetensors"), load_file(parts / "run/hf/model.safetensors")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    report = json.loads((full / "run" / "mixture.json").read_text())
    for run in (report, json.loads((parts / "run" / "mixture.json").read_text())):
        for source in run["sources"]:
            source.pop("path")  # each run tokenized the pair file into its own folder
    assert report == run
    # 4 steps x 8 examples in mirror units of 2: Grain deals the 16 units 12 : 4 for weights 0.7 : 0.3 (within one
    # unit of 11.2 : 4.8; the shares converge as the run goes on, tests/test_mixture.py).
    assert (report["unit"], report["positions"]) == ("examples (mirror units)", 32)
    assert [s["trained"] for s in report["sources"]] == [24, 8]
    assert "mixture, share of the 32 examples (mirror units) trained: data.sources[0] 75.0% (weight 70.0%)" in (
        result.stdout
    )

    assert list((full / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert list((full / "run" / "tensorboard").glob("events.out.tfevents.*"))
    ids = json.loads((parts / "run" / "trackers.json").read_text())
    check = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
        "print(json.dumps(S.get_logs('rpo-jax', sys.argv[1])))"
    )
    import subprocess
    import sys

    logs = subprocess.run(
        [sys.executable, "-c", check, ids["trackio_name"]], env=env(tmp_path), capture_output=True, text=True
    )
    losses = {log["step"]: log["loss"] for log in json.loads(logs.stdout) if "loss" in log}  # the last write wins
    assert losses == {r["step"]: pytest.approx(r["loss"]) for r in metric_lines(parts / "run") if "loss" in r}


def test_a_source_with_a_bad_row_names_itself_its_file_row_and_field(tmp_path, general_shards):
    bad = tmp_path / "bad_pairs.jsonl"
    rows = (DEFAULT_PAIRS / "pairs.jsonl").read_text().splitlines()[:3]
    broken = json.loads(rows[1])
    del broken["sequences"]
    bad.write_text("\n".join([rows[0], json.dumps(broken), rows[2]]) + "\n")
    sources = [{"path": str(general_shards), "weight": 1.0}, {"path": str(bad), "weight": 1.0}]
    result = run_train(mixture_config(tmp_path, general_shards, steps=1, sources=sources), env=env(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"rpo-jax train: error: data.sources[1].path: {bad}:2: field 'sequences': missing")
    ), result.stderr[-2000:]
