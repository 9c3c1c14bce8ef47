"""`rpo-jax eval`: IF suites on given responses, the ifbench refusal of uncheckable ids, and the pairs suite on a
tiny checkpoint."""

import json
from pathlib import Path

import pytest

from data_pipeline.constraints import ConstraintError
from rpo_jax.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"


def test_ifeval_on_given_responses_reproduces_gpt4(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["eval", "--suite", "ifeval", "--responses",
                 str(ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"), "--output", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["prompt_level_strict_acc"] == pytest.approx(0.7722, abs=0.005)
    assert results["prompt_level_loose_acc"] == pytest.approx(0.7981, abs=0.005)
    assert "prompt_level_strict_acc" in capsys.readouterr().out


def test_ifbench_names_the_ids_it_cannot_check(tmp_path):
    # Scored runs (--skip-unsupported) are tested in test_ifbench_score.py.
    with pytest.raises(ConstraintError, match=r"'ratio:stop_words' on 12 prompt.*'words:start_verb' on 6 prompt"):
        main(["eval", "--suite", "ifbench", "--responses", str(ASSETS / "ifbench" / "sample_output.jsonl")])
