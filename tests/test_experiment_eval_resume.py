"""An evaluation stage interrupted between suites keeps the suites it finished (greedy responses of the same model
would be the same), so a long evaluation resumes instead of starting over; the suites it runs share one load of
the model."""

import json
from pathlib import Path

import pytest

from experiments import evaluation
from experiments.config import EvalSection, ExperimentConfig, ModelSection
from experiments.stages import Stage


class OneFolder:
    """A stage store that runs every build in one given folder (the partial folder of an interrupted attempt)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def run(self, name, settings, inputs, build):
        return build(self.folder)


@pytest.fixture
def fake_model(monkeypatch):
    """Stands in for the checkpoint: records each load and each prompt file generated for (answers "ok")."""
    import rpo_jax.generate.generation

    calls = {"loads": [], "generated": []}

    def fake_load(checkpoint, tokenizer_dir):
        calls["loads"].append(checkpoint)
        return f"model from {checkpoint}"

    def fake_generate(loaded, prompts, output, settings):
        assert loaded == f"model from {calls['loads'][0]}"
        calls["generated"].append(Path(prompts).name)
        rows = [json.loads(line) for line in Path(prompts).read_text().splitlines()]
        Path(output).write_text("".join(json.dumps({"prompt": r["prompt"], "response": "ok"}) + "\n" for r in rows))
        return {"responses": len(rows)}

    monkeypatch.setattr(rpo_jax.generate.generation, "load_for_sampling", fake_load)
    monkeypatch.setattr(rpo_jax.generate.generation, "generate_with_model", fake_generate)
    return calls


def evaluate(tmp_path: Path, folder: Path, suites: tuple[str, ...]) -> dict:
    cfg = ExperimentConfig(model=ModelSection(hf_dir=str(tmp_path)), eval=EvalSection(limit=3))
    model = Stage("model", "k", tmp_path, {"hf_dir": "hf"}, 0.0, cached=True)
    return evaluation.evaluate_model(OneFolder(folder), cfg, "eval-base", model, suites, model)


def test_an_interrupted_evaluation_keeps_its_finished_suites(tmp_path, fake_model):
    folder = tmp_path / "partial"
    folder.mkdir()
    finished = {"prompt_level_strict_acc": 0.25, "from": "the earlier attempt"}
    (folder / "ifeval_summary.json").write_text(json.dumps(finished))
    summary = evaluate(tmp_path, folder, ("ifeval", "ifbench"))

    assert fake_model["generated"] == ["ifbench_prompts.jsonl"]
    assert summary["ifeval"] == finished
    assert summary["ifbench"]["num_prompts"] == 3 and summary["ifbench"]["generation"] == {"responses": 3}
    assert json.loads((folder / "ifbench_summary.json").read_text()) == summary["ifbench"]


def test_every_suite_of_a_model_is_answered_by_one_load_and_a_finished_stage_loads_nothing(tmp_path, fake_model):
    folder = tmp_path / "stage"
    folder.mkdir()
    evaluate(tmp_path, folder, ("ifeval", "ifbench"))
    assert fake_model["generated"] == ["ifeval_prompts.jsonl", "ifbench_prompts.jsonl"]
    assert fake_model["loads"] == [str(tmp_path / "hf")]

    evaluate(tmp_path, folder, ("ifeval", "ifbench"))  # both summaries written: resumes without the model
    assert len(fake_model["loads"]) == 1 and len(fake_model["generated"]) == 2
