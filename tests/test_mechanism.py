"""The mechanism experiment (`design: mechanism`): its data (every arm from the same responses, the noise knob, the
shuffled control, the held-out sets) without JAX, and every stage end to end at toy size through the CLI, with a
rerun that reuses every stage."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_pipeline.pairs.readers import read_pairs
from experiments.mechanism_config import MechanismData
from experiments.mechanism_data import build_heldout, build_training

ROOT = Path(__file__).resolve().parents[1]
DATA = MechanismData(
    train_instructions=12,
    validation_instructions=3,
    test_instructions=4,
    min_k=3,
    max_k=4,
    train_responses=3,
    heldout_responses=3,
)


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    sets = {}
    for rate in (0.0, 1.0):
        folder = tmp_path_factory.mktemp(f"noise{rate}")
        sets[rate] = (folder, build_training(DATA, rate, folder))
    return sets


def test_every_arm_reads_the_same_responses(training):
    folder, summary = training[1.0]
    responses = {
        arm: {s.response for p in read_pairs(str(folder / arm / "pairs.jsonl")) for s in p.sequences}
        for arm in ("rpo", "dpo_best_worst", "dpo_same_pairs", "iopo", "rpo_shuffled")
    }
    assert responses["rpo"] == responses["rpo_shuffled"] == responses["iopo"] == responses["dpo_same_pairs"]
    assert responses["dpo_best_worst"] <= responses["rpo"]
    # Every response pair RPO uses (both directions) under the original prompt, but those whose scores tie.
    assert 0 < summary["dpo_same_pairs"]["pairs"] * 2 < summary["rpo"]["pairs"]
    nested = training[0.0][1]  # nested vectors: no two responses of an instruction meet as many constraints
    assert nested["dpo_same_pairs"]["pairs"] * 2 == nested["rpo"]["pairs"]


def test_noise_rate_is_the_share_of_noisy_best_worst_pairs(training):
    assert training[0.0][1]["dpo_best_worst"]["noise"]["noisy"] == 0
    assert training[0.0][1]["dpo_same_pairs"]["noise"]["noisy"] == 0  # nested vectors: no DPO pair is noisy
    noisy = training[1.0][1]["dpo_best_worst"]["noise"]
    assert noisy["noisy"] == noisy["pairs"] > 0  # K >= 3 here: every instruction's best-vs-worst pair is noisy


def test_shuffled_control_keeps_responses_and_moves_prompts(training):
    folder, _ = training[0.0]
    rpo = read_pairs(str(folder / "rpo" / "pairs.jsonl"))
    shuffled = read_pairs(str(folder / "rpo_shuffled" / "pairs.jsonl"))
    assert [p.sequences[0].response for p in rpo] == [p.sequences[0].response for p in shuffled]
    assert sorted(p.sequences[0].messages[-1].content for p in rpo) == sorted(
        p.sequences[0].messages[-1].content for p in shuffled
    )
    moved = sum(a.sequences[0].messages != b.sequences[0].messages for a, b in zip(rpo, shuffled, strict=True))
    assert moved > len(rpo) // 2


def test_heldout_sets(tmp_path):
    summary = build_heldout(DATA, tmp_path)
    index = json.loads((tmp_path / "test_candidates" / "index.json").read_text())
    per_instruction = {}
    for entry in index:
        per_instruction.setdefault(entry["instruction"], []).append(entry["compliant"])
    assert len(per_instruction) == 4 and all(sum(v) == 1 and len(v) == 3 for v in per_instruction.values())
    assert summary["test"]["unit_pairs"] == len(read_pairs(str(tmp_path / "test_units" / "pairs.jsonl")))


@pytest.mark.slow
def test_mechanism_experiment_end_to_end(tmp_path):
    config = {
        "design": "mechanism",
        "name": "toy",
        "data": {
            "train_instructions": 6,
            "validation_instructions": 2,
            "test_instructions": 3,
            "min_k": 1,
            "max_k": 3,
            "train_responses": 3,
            "heldout_responses": 3,
            "noise_rates": [0.0],
        },
        "train": {
            "arms": ["rpo", "dpo_best_worst"],
            "seeds": [0, 1],
            "steps": 2,
            "overrides": ["data.global_batch_size=2", "checkpoint.save_every=2", "model.hidden_size=32"],
        },
        "report": {"bootstrap_replicates": 100},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "rpo_jax.cli",
        "experiment",
        "--config",
        str(path),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    cell = results["arms"]["0.0"]["rpo"]["mirror"]["all"]
    assert cell["low"] <= cell["accuracy"] <= cell["high"] and len(cell["per_seed"]) == 2
    assert "rpo-dpo_best_worst" in results["arms"]["0.0"] and (tmp_path / "out" / "mechanism.png").stat().st_size
    with gzip.open(tmp_path / "out" / "items.jsonl.gz", "rt") as items:
        runs = {(i["arm"], i["seed"]) for i in map(json.loads, items)}
    assert runs == {("rpo", 0), ("rpo", 1), ("dpo_best_worst", 0), ("dpo_best_worst", 1)}
    stages = sorted(p.name for p in (tmp_path / "out" / "stages").iterdir())
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and sorted(p.name for p in (tmp_path / "out" / "stages").iterdir()) == stages
    assert "train:" not in again.stdout + again.stderr  # nothing retrained
