"""`rpo-jax experiment` end to end on a tiny random Llama: every stage runs, the report has intervals and paired
differences, a rerun reuses every stage, a changed setting reruns only what depends on it, `--stage` needs its
inputs."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from llama_hf_fixtures import params_and_hf_folder
from trainer_fixtures import TOKENIZER

from rpo_jax.config.loading import load_config

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "data_pipeline" / "assets" / "chat_templates" / "llama3.jinja"
RESPONSES = (
    "<<A TITLE>>\nTHIS ANSWER USES CAPITALS ON PURPOSE. IT IS SHORT. P.S. THAT IS ALL.",
    "a plain answer, in lowercase, with commas, and very few words",
    '"quoted answer with several words * one * two. Section 1 of it. Is there anything else I can help with?"',
)


def experiment(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rpo_jax.cli", "experiment", "--config", str(config), "--output-dir", str(out)]
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as on a plain CPU machine (tests set 8)
    return subprocess.run([*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    run_cfg = load_config(ROOT / "configs" / "run" / "tiny_rpo.yaml")
    _, hf, _ = params_and_hf_folder(run_cfg.model, tmp / "base", seed=0, tokenizer_dir=TOKENIZER)
    shutil.copyfile(TEMPLATE, hf / "chat_template.jinja")  # the SentencePiece tokenizer has no chat template
    config = {
        "name": "tiny smoke",
        "model": {"hf_dir": str(hf), "run_config": str(ROOT / "configs" / "run" / "tiny_rpo.yaml")},
        "instructions": {"num_train": 6, "num_heldout": 4, "min_constraints": 3, "max_constraints": 4},
        "sampling": {"num_samples": 3, "temperature": 1.0, "max_new_tokens": 16, "batch_size": 18},
        "pairs": {"min_g": 1, "eval_fraction": 0.0},
        "train": {
            "methods": ["dpo", "rpo", "iopo"],
            "steps": 2,
            "overrides": ["data.global_batch_size=2", "checkpoint.save_every=2"],
        },
        "eval": {"limit": 3, "max_new_tokens": 8, "batch_size": 4},
        "multiturn": {"conversations": 3, "turns": 2, "system_constraints": 1, "min_constraints": 2},
        "report": {"bootstrap_replicates": 200},
    }
    path = tmp / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    # A random model's samples all get the same verdicts (no pairs), so the samples come from a file here, as a
    # committed run's would: three responses per training instruction that differ on several constraints.
    result = experiment(path, tmp / "out", "--stage", "instructions")
    assert result.returncode == 0, result.stderr[-3000:]
    (instructions,) = (tmp / "out" / "stages").glob("instructions-[0-9a-f]*/instructions/train_prompts.jsonl")
    # One stage at a time, in order: `--stage model` stops there (the samples are not asked for yet).
    result = experiment(path, tmp / "out", "--stage", "model")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp / "out" / "stages").iterdir()) == [
        "instructions",
        "instructions-multiturn",
        "model",
    ]
    keys = [json.loads(line)["key"] for line in instructions.read_text().splitlines()]
    responses = tmp / "samples.jsonl.gz"
    with gzip.open(responses, "wt") as f:
        for key in keys:
            for i, text in enumerate(RESPONSES):
                f.write(json.dumps({"key": key, "response": text, "sample_id": i}) + "\n")
    config["sampling"]["responses_file"] = str(responses)
    path.write_text(yaml.safe_dump(config))
    result = experiment(path, tmp / "out")
    assert result.returncode == 0, result.stderr[-4000:]
    return path, tmp / "out"


@pytest.mark.slow
def test_every_stage_runs_and_the_report_has_paired_intervals(setup):
    _, out = setup
    results = json.loads((out / "results.json").read_text())
    assert set(results["suites"]) == {"ifeval", "ifbench", "heldout"}
    for suite in results["suites"].values():
        assert set(suite["models"]) == {"base", "dpo", "rpo", "iopo"}
        assert {"rpo-dpo", "dpo-base", "rpo-base"} <= set(suite["differences"])
        for model in suite["models"].values():
            r = model["intervals"]["prompt"]
            assert r["low"] <= r["accuracy"] <= r["high"] and model["num_prompts"] == 3
    assert all(results["pairs"][recipe]["pairs"]["train"] > 0 for recipe in ("dpo", "rpo", "iopo"))
    assert results["sampling"]["responses"] == 18
    for bucket in results["heldout_by_k"].values():
        for r in bucket.values():
            for level in ("prompt", "instruction"):
                assert r[level]["low"] <= r[level]["accuracy"] <= r[level]["high"]
    report = (out / "report.md").read_text()
    assert "rpo-dpo" in report and "by number of constraints" in report and (out / "accuracy_vs_k.png").is_file()
    items = [json.loads(line) for line in gzip.open(out / "items.jsonl.gz", "rt")]
    assert len(items) == results["items"]["rows"] == 4 * (3 * 3 + 6)  # 4 models: 3 suites x 3 prompts, 6 turns
    # The held-out multi-turn suite: 3 conversations of 2 turns, answered turn by turn, scored at each turn.
    by_turn = results["multiturn"]["by_turn"]
    assert list(by_turn) == ["turn 1", "turn 2"] and "multi-turn strict accuracy by turn" in report
    for cells in by_turn.values():
        assert set(cells) == {"base", "dpo", "rpo", "iopo"} and all(c["num_prompts"] == 3 for c in cells.values())
    assert sum(cell["base"]["num_prompts"] for cell in results["multiturn"]["by_k"].values() if cell) == 6
    (responses,) = out.glob("stages/eval-multiturn-rpo-*/multiturn_responses.jsonl")
    rows = [json.loads(line) for line in responses.read_text().splitlines()]
    assert len(rows) == 3 and all(len(row["responses"]) == 2 for row in rows)


@pytest.mark.slow
def test_rerun_reuses_every_stage_and_a_change_reruns_only_downstream(setup):
    config, out = setup
    stages = out / "stages"
    before = {p.name: (p / "stage.json").stat().st_mtime_ns for p in stages.iterdir()}
    assert experiment(config, out).returncode == 0
    assert {p.name: (p / "stage.json").stat().st_mtime_ns for p in stages.iterdir()} == before
    result = experiment(config, out, "--set", "report.seed=1")
    assert result.returncode == 0, result.stderr[-3000:]
    new = sorted(set(p.name for p in stages.iterdir()) - set(before))
    assert len(new) == 1 and new[0].startswith("report-")


@pytest.mark.slow
def test_a_single_stage_needs_its_inputs(setup, tmp_path):
    config, _ = setup
    result = experiment(config, tmp_path / "fresh", "--stage", "eval")
    assert result.returncode == 2 and "stage 'instructions' has not run" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_single_turn_chain_keeps_its_stage_keys(tmp_path):
    """The conversation settings added to the instructions (issue #28) are left out of the instructions stage's key,
    so an experiment made before them reuses its instructions, samples, pairs, trained models and evaluations; the
    multi-turn suite only adds stages. Single-turn instructions only: the experiment refuses conversational ones."""
    from experiments.config import ExperimentConfig
    from experiments.runner import instructions_stage
    from experiments.stages import StageStore, stage_key
    from rpo_jax.config.schema import ConfigError

    preset = ROOT / "configs" / "experiment" / "smollm2_rpo_vs_dpo.yaml"
    store = StageStore(tmp_path)
    store.run = lambda name, settings, inputs, build: stage_key(name, settings, inputs)  # the key, nothing built
    assert instructions_stage(store, load_config(preset, [], ExperimentConfig)) == "257c5b491b1ca5d7"  # as before
    with pytest.raises(ConfigError, match="multiturn suite"):
        load_config(preset, ["instructions.turns=2"], ExperimentConfig)


def test_a_training_stopped_by_sigterm_leaves_its_stage_unfinished(tmp_path, monkeypatch):
    """A SIGTERM makes `train` save a checkpoint and return None: that stage must stay partial (the next run
    resumes it), never be cached as a trained model with no export."""
    from experiments.config import ExperimentConfig
    from experiments.runner import train_stage
    from experiments.stages import Stage, StageStopped, StageStore

    cfg = load_config(ROOT / "configs" / "experiment" / "smollm2_rpo_vs_dpo.yaml", [], ExperimentConfig)
    model = Stage("model", "m", tmp_path / "model", {"hf_dir": "hf"}, 0.0, cached=True)
    pairs = Stage("pairs", "p", tmp_path / "pairs", {"rpo": {"split": {"eval": 3}}}, 0.0, cached=True)
    store = StageStore(tmp_path / "stages")
    calls = []

    def stopped_train(run_cfg, resume):
        calls.append(run_cfg.train.output_dir)
        return None

    monkeypatch.setattr("rpo_jax.train.trainer.train", stopped_train)
    with pytest.raises(StageStopped, match="stopped before step 30"):
        train_stage(store, cfg, "rpo", 0, model, pairs)
    assert [p.name.startswith(".train-rpo-lr0-") for p in store.root.iterdir()] == [True]
    monkeypatch.setattr("rpo_jax.train.trainer.train", lambda run_cfg, resume: Path(run_cfg.train.output_dir) / "hf")
    stage = train_stage(store, cfg, "rpo", 0, model, pairs)
    assert not stage.cached and [p.name for p in store.root.iterdir()] == [stage.path.name]
    assert stage.path.name.startswith("train-rpo-lr0-") and calls[0].endswith(".partial/run")


def test_a_stage_finished_over_several_attempts_reports_their_summed_wall_time(tmp_path):
    from experiments.stages import STAGE_FILE, StageStopped, StageStore

    store = StageStore(tmp_path / "stages")

    def attempt(seconds, outcome):
        def build(folder):
            time.sleep(seconds)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return build

    for outcome in (StageStopped("preempted"), KeyboardInterrupt()):
        with pytest.raises(type(outcome)):
            store.run("train", {"lr": 1}, (), attempt(0.3, outcome))
    stage = store.run("train", {"lr": 1}, (), attempt(0.1, {"ok": True}))
    record = json.loads((stage.path / STAGE_FILE).read_text())
    assert stage.seconds >= 0.7 and record["seconds"] == stage.seconds and record["attempts"] == 3
    assert store.run("train", {"lr": 1}, (), attempt(0, {"ok": False})).summary == {"ok": True}  # cached


def test_method_overrides_change_one_method_and_no_other_stage_key(tmp_path, monkeypatch):
    """IOPO's two micro-batches (the small preset's `method_overrides`) reach IOPO's run config only; the other
    methods' configs and the pairs stage are the same as without them, so their trained models stay cached."""
    from experiments.config import ExperimentConfig
    from experiments.runner import pairs_stage, run_config
    from experiments.stages import Stage, StageStore
    from rpo_jax.config.schema import ConfigError

    preset = ROOT / "configs" / "experiment" / "smollm2_rpo_vs_dpo.yaml"
    cfg = load_config(preset, [], ExperimentConfig)
    plain = load_config(preset, ["train.method_overrides=[]", "train.methods=[dpo]"], ExperimentConfig)
    model = Stage("model", "m", tmp_path / "model", {"hf_dir": "hf"}, 0.0, cached=True)
    split = {"split": {"eval": 3}}
    pairs = Stage("pairs", "p", tmp_path / "pairs", {"dpo": split, "rpo": split, "iopo": split}, 0.0, cached=True)
    runs = {m: run_config(cfg, m, 1e-4, model, pairs, tmp_path) for m in ("dpo", "rpo", "iopo")}
    assert [runs[m].train.grad_accum_steps for m in ("dpo", "rpo", "iopo")] == [1, 1, 2]
    for method in ("dpo", "rpo"):
        assert runs[method] == run_config(plain, method, 1e-4, model, pairs, tmp_path)
    monkeypatch.setattr("experiments.data_stages.build_pairs", lambda settings: {})
    keys = [pairs_stage(StageStore(tmp_path / name), c, model, model).key for name, c in (("a", cfg), ("b", plain))]
    assert keys[0] == keys[1]
    with pytest.raises(ConfigError, match="METHOD:section.key=value"):
        load_config(preset, ["train.method_overrides=[ipo:train.grad_accum_steps=2]"], ExperimentConfig)


@pytest.mark.slow
def test_two_seeds_train_two_models_per_method_and_the_differences_carry_each_seed(setup):
    """`train.seeds=[0,1]` in the smoke experiment's folder (stage keys hold absolute paths, so a copy would
    retrain): seed 0's models and evaluations are reused, each method trains a second model with seed 1,
    `dpo_same_pairs` trains on RPO's response pairs under the original instruction, and every difference has
    per-seed values and an interval over seeds and prompts that `items.jsonl.gz` recomputes. The single-seed
    report files are put back afterwards."""
    from data_pipeline.pairs.readers import read_pairs
    from experiments.stats import runs_difference

    config, out = setup
    files = ("results.json", "report.md", "accuracy_vs_k.png", "items.jsonl.gz")
    kept = {name: (out / name).read_bytes() for name in files}
    single = json.loads(kept["results.json"])
    before = {p.name for p in (out / "stages").iterdir()}
    methods = "train.methods=[dpo,rpo,dpo_same_pairs]"
    try:
        result = experiment(config, out, "--set", "train.seeds=[0,1]", "--set", methods)
        assert result.returncode == 0, result.stderr[-4000:]
        results = json.loads((out / "results.json").read_text())
        report = (out / "report.md").read_text()
        items = [json.loads(line) for line in gzip.open(out / "items.jsonl.gz", "rt")]
    finally:
        for name, data in kept.items():
            (out / name).write_bytes(data)
    trained = sorted(p.name.rsplit("-", 1)[0] for p in (out / "stages").glob("train-*"))
    assert trained == [
        "train-dpo-lr0",
        "train-dpo-lr0-seed1",
        "train-dpo_same_pairs-lr0",
        "train-dpo_same_pairs-lr0-seed1",
        "train-iopo-lr0",  # the smoke run's, not listed here
        "train-rpo-lr0",
        "train-rpo-lr0-seed1",
    ]
    new = {p.name.rsplit("-", 1)[0] for p in (out / "stages").iterdir() if p.name not in before}
    assert {"train-rpo-lr0", "train-dpo-lr0", "eval-rpo", "eval-base", "pairs", "samples"}.isdisjoint(new)  # reused
    assert {"pairs-same", "train-rpo-lr0-seed1", "eval-rpo-seed1", "eval-multiturn-rpo-seed1"} <= new
    (seed1,) = (out / "stages").glob("train-rpo-lr0-seed1-*")
    run = json.loads((seed1 / "stage.json").read_text())["settings"]["run"]
    assert run["train"]["seed"] == 1 and run["data"]["shuffle_seed"] == 1
    assert results["seeds"] == [0, 1]
    for name, suite in results["suites"].items():
        assert set(suite["models"]["rpo"]["per_seed"]) == {"0", "1"} and "per_seed" not in suite["models"]["base"]
        assert {"rpo-dpo", "rpo-dpo_same_pairs", "dpo_same_pairs-base"} <= set(suite["differences"])
        d = suite["differences"]["rpo-dpo"]
        assert d["seeds"] == 2 and set(d["per_seed"]) == {"0", "1"}
        assert d["per_seed"]["0"] == single["suites"][name]["differences"]["rpo-dpo"]  # seed 0 is the smoke run
        for level in ("prompt", "instruction"):
            assert d[level]["low"] <= d[level]["delta"] <= d[level]["high"]
        arrays = {}
        for model in ("dpo", "rpo"):
            rows = [[i for i in items if (i["model"], i["seed"], i["suite"]) == (model, s, name)] for s in (0, 1)]
            arrays[model] = np.array([[sum(i["strict"]) for i in r] for r in rows])
        counts = [len(i["strict"]) for i in items if (i["model"], i["seed"], i["suite"]) == ("base", None, name)]
        recomputed = runs_difference(arrays["dpo"], arrays["rpo"], counts, replicates=200)
        assert recomputed["prompt"] == d["prompt"] and recomputed["instruction"] == d["instruction"]
    assert "Per seed, paired differences" in report
    # DPO on RPO's response pairs: the original instruction, pairs RPO also uses.
    (rpo,) = (out / "stages").glob("pairs-[0-9a-f]*/rpo/pairs.jsonl")
    (same,) = (out / "stages").glob("pairs-same-*/dpo_same_pairs/pairs.jsonl")
    rpo_pairs = {(r.group_id, frozenset(s.response for s in r.sequences)) for r in read_pairs(str(rpo))}
    same_pairs = [(r.group_id, frozenset(s.response for s in r.sequences)) for r in read_pairs(str(same))]
    assert same_pairs and set(same_pairs) <= rpo_pairs
