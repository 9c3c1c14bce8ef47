"""The SmolLM2 experiment's seeds, validation split and matched-data DPO arm, without training: the learning rate is
chosen on the validation split (never on a reported suite when there is one), every seed trains the chosen rate,
the validation instructions leave the held-out ones as they were, the new settings are checked, and the
seed-and-prompt intervals of the report reduce to the prompt intervals for one seed."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.config import ExperimentConfig
from experiments.stages import Stage, StageStore
from rpo_jax.config.loading import load_config
from rpo_jax.config.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "configs" / "experiment" / "smollm2_rpo_vs_dpo.yaml"
FULL = ROOT / "configs" / "experiment" / "smollm2_rpo_vs_dpo_full.yaml"
# Prompt-level accuracy per suite and learning rate: the held-out suite prefers the other rate.
ACCURACY = {"validation": {1e-4: 0.2, 2e-4: 0.5}, "heldout": {1e-4: 0.9, 2e-4: 0.1}}


def stage(name: str, summary: dict) -> Stage:
    return Stage(name, name, Path("/nowhere") / name, summary, 0.0, cached=True)


def choose(monkeypatch, overrides: list[str]) -> tuple[list[Stage], dict, list]:
    from experiments.runner import select_rate

    cfg = load_config(SMALL, ["train.learning_rates=[1.0e-4,2.0e-4]", *overrides], ExperimentConfig)
    evaluated = []

    def fake_train(store, cfg, method, rate_index, model, pairs, seed=0):
        rate = cfg.train.learning_rates[rate_index]
        return stage(f"train-{method}-lr{rate_index}-{seed}", {"hf_dir": "hf", "learning_rate": rate, "seed": seed})

    def fake_evaluate(store, cfg, name, checkpoint, suites, instructions, tokenizer_dir):
        evaluated.append((name, suites))
        (suite,) = suites
        return stage(name, {suite: {"prompt_level_strict_acc": ACCURACY[suite][checkpoint.summary["learning_rate"]]}})

    monkeypatch.setattr("experiments.runner.train_stage", fake_train)
    monkeypatch.setattr("experiments.runner.evaluate_model", fake_evaluate)
    model = stage("model", {"hf_dir": "hf"})
    kept, selection = select_rate(None, cfg, "rpo", model, stage("instructions", {}), stage("pairs", {}))
    return kept, selection, evaluated


def test_the_validation_split_not_heldout_decides_the_learning_rate(monkeypatch):
    from experiments.report import _selection_lines

    kept, selection, evaluated = choose(monkeypatch, ["instructions.num_validation=5", "train.seeds=[0,1]"])
    assert [(s.summary["learning_rate"], s.summary["seed"]) for s in kept] == [(2e-4, 0), (2e-4, 1)]
    assert evaluated == [("select-rpo", ("validation",))] * 2  # the first seed's candidates, on validation only
    assert selection == {
        "suite": "validation",
        "reported_suite": False,
        "seed": 0,
        "scores": {1e-4: 0.2, 2e-4: 0.5},
        "chosen": 2e-4,
    }
    assert "REPORTED" not in "\n".join(_selection_lines({"rpo": selection}))
    # Without a validation split the held-out suite decides, and the report says that suite is a reported one.
    kept, selection, evaluated = choose(monkeypatch, [])
    assert [s.summary["learning_rate"] for s in kept] == [1e-4] and selection["reported_suite"]
    assert {suites for _, suites in evaluated} == {("heldout",)}
    assert "chosen on heldout (a REPORTED suite" in "\n".join(_selection_lines({"rpo": selection}))


def test_validation_instructions_leave_the_heldout_ones_unchanged(tmp_path):
    from data_pipeline.pairs.synthesis import base_tasks
    from experiments.runner import instructions_stage

    sizes = ["instructions.num_train=3", "instructions.num_heldout=4", "train.learning_rates=[1.0e-4,2.0e-4]"]
    made = {}
    for count in (0, 3):
        cfg = load_config(SMALL, [*sizes, f"instructions.num_validation={count}"], ExperimentConfig)
        made[count] = instructions_stage(StageStore(tmp_path / str(count)), cfg)
    files = {count: s.path / "instructions" for count, s in made.items()}
    for name in ("heldout_ifeval.jsonl", "train_prompts.jsonl", "train_instructions.jsonl"):
        assert (files[0] / name).read_bytes() == (files[3] / name).read_bytes()
    assert not (files[0] / "validation_ifeval.jsonl").exists() and "validation" not in made[0].summary
    rows = [json.loads(line) for line in (files[3] / "validation_ifeval.jsonl").read_text().splitlines()]
    assert [row["key"] for row in rows] == ["validation-00000", "validation-00001", "validation-00002"]
    heldout_tasks = set(base_tasks()["heldout"])  # held-out base tasks, K in the held-out range
    assert all(any(row["prompt"].startswith(task) for task in heldout_tasks) for row in rows)
    assert made[3].summary["validation"]["instructions"] == 3 and made[3].key != made[0].key


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (["instructions.num_validation=-1", "train.learning_rates=[1.0e-4,2.0e-4]"], "instructions.num_validation"),
        (["instructions.num_validation=4"], "instructions.num_validation"),  # one rate: nothing to choose
        (["train.seeds=[]"], "train.seeds"),
        (["train.seeds=[1,1]"], "train.seeds"),
        (["train.seeds=[-1]"], "train.seeds"),
        (["train.overrides=[train.seed=3]"], "train.seed"),
        (["train.method_overrides=[rpo:data.shuffle_seed=2]"], "data.shuffle_seed"),
    ],
)
def test_bad_seed_and_validation_settings_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(SMALL, override, ExperimentConfig)


def test_the_full_preset_has_seeds_validation_and_the_matched_dpo_arm():
    cfg = load_config(FULL, [], ExperimentConfig)
    assert cfg.train.seeds == (0, 1, 2) and "dpo_same_pairs" in cfg.train.methods
    assert cfg.instructions.num_validation > 0 and cfg.selection_suite == "validation"
    assert "ESTIMATE, not a measurement" in FULL.read_text()


def test_seed_intervals_reduce_to_prompt_intervals_and_pair_each_seed():
    from experiments.stats import accuracy_interval, paired_difference, runs_difference, runs_interval

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 4, size=30)
    runs = rng.integers(0, counts + 1, size=(2, 30))
    base = rng.integers(0, counts + 1, size=(1, 30))
    assert runs_interval(runs[:1], counts, replicates=300) == accuracy_interval(runs[0], counts, replicates=300)
    d = runs_difference(base, runs, counts, replicates=300)
    assert d["seeds"] == 2 and d["per_seed"][1] == paired_difference(base[0], runs[1], counts, replicates=300)
    prompt = (runs == counts).mean() - (base == counts).mean()
    assert d["prompt"]["delta"] == pytest.approx(prompt) and d["prompt"]["low"] <= prompt <= d["prompt"]["high"]
    assert d["instruction"]["delta"] == pytest.approx(runs.sum() / (2 * counts.sum()) - base.sum() / counts.sum())
