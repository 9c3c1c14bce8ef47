"""An evaluation stage interrupted between suites keeps the suites it finished (greedy responses of the same model
would be the same), so a long evaluation resumes instead of starting over."""

import json
from pathlib import Path

from experiments import evaluation
from experiments.config import EvalSection, ExperimentConfig, ModelSection
from experiments.stages import Stage


class OneFolder:
    """A stage store that runs every build in one given folder (the partial folder of an interrupted attempt)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def run(self, name, settings, inputs, build):
        return build(self.folder)


def test_an_interrupted_evaluation_keeps_its_finished_suites(tmp_path, monkeypatch):
    import rpo_jax.generate.generation

    generated = []

    def fake_generate(checkpoint, tokenizer_dir, prompts, output, settings):
        generated.append(Path(prompts).name)
        rows = [json.loads(line) for line in Path(prompts).read_text().splitlines()]
        Path(output).write_text("".join(json.dumps({"prompt": r["prompt"], "response": "ok"}) + "\n" for r in rows))
        return {"responses": len(rows)}

    monkeypatch.setattr(rpo_jax.generate.generation, "generate_responses", fake_generate)
    folder = tmp_path / "partial"
    folder.mkdir()
    finished = {"prompt_level_strict_acc": 0.25, "from": "the earlier attempt"}
    (folder / "ifeval_summary.json").write_text(json.dumps(finished))
    cfg = ExperimentConfig(model=ModelSection(hf_dir=str(tmp_path)), eval=EvalSection(limit=3))
    model = Stage("model", "k", tmp_path, {"hf_dir": "hf"}, 0.0, cached=True)
    summary = evaluation.evaluate_model(OneFolder(folder), cfg, "eval-base", model, ("ifeval", "ifbench"), model)

    assert generated == ["ifbench_prompts.jsonl"]
    assert summary["ifeval"] == finished
    assert summary["ifbench"]["num_prompts"] == 3 and summary["ifbench"]["generation"] == {"responses": 3}
    assert json.loads((folder / "ifbench_summary.json").read_text()) == summary["ifbench"]
