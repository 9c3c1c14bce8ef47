"""IFEval scorer: reproduces Google's published GPT-4 numbers; reports unmatched rows; rejects bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.constraints import ConstraintError
from data_pipeline.constraints.scoring import InputRow, load_input_rows, loose_variants, score, score_row

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"
IFEVAL_INPUT = ASSETS / "ifeval" / "input_data.jsonl"
IFEVAL_FILTERED = ASSETS / "ifeval" / "filtered_input_data.jsonl"
GPT4 = ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"
IFBENCH = ASSETS / "ifbench" / "IFBench_test.jsonl"


def test_reproduces_published_gpt4_numbers():
    result = score(IFEVAL_FILTERED, GPT4)
    # Google's IFEval GPT-4 responses: prompt-level strict 0.7722 / loose 0.7981.
    assert result["prompt_level_strict_acc"] == pytest.approx(0.7722, abs=0.005)
    assert result["prompt_level_loose_acc"] == pytest.approx(0.7981, abs=0.005)
    assert result["num_prompts_scored"] == 540 and result["num_instructions_scored"] == 832
    # Instruction level, as measured with this checker (417/540 and 697/832 strict).
    assert result["inst_level_strict_acc"] == pytest.approx(0.8377, abs=0.005)
    assert result["inst_level_loose_acc"] == pytest.approx(0.8570, abs=0.005)
    # Google's response file has one response whose prompt is not in the input file.
    assert result["num_responses_without_prompt"] == 1
    assert result["num_prompts_without_response"] == 0


def test_unmatched_prompts_are_reported_not_dropped():
    result = score(IFEVAL_INPUT, GPT4)
    assert result["prompt_keys_without_response"] == [2785]
    assert result["num_prompts_without_response"] == 1
    assert result["num_prompts_scored"] == 540


def test_loose_variants_follow_ifeval():
    response = "Sure, here it is:\n*body* text\nThanks"
    assert loose_variants(response) == [
        response,
        "Sure, here it is:\nbody text\nThanks",
        "*body* text\nThanks",
        "Sure, here it is:\n*body* text",
        "*body* text",
        "body text\nThanks",
        "Sure, here it is:\nbody text",
        "body text",
    ]
    row = InputRow(1, "p", ("startend:end_checker", "punctuation:no_comma"), ({"end_phrase": "The end."}, {}), 1)
    strict, loose = score_row(row, "Sure, a story:\nIt was fine. The end.\nHope this helps")
    assert strict == [False, False] and loose == [True, True]


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_malformed_json_line_names_file_and_line(tmp_path):
    good = json.dumps({"key": 1, "prompt": "p", "instruction_id_list": [], "kwargs": []})
    path = _write(tmp_path, "in.jsonl", [good, '{"key": 2, "prompt": '])
    with pytest.raises(ConstraintError, match=r"in\.jsonl:2: field '<line>': malformed JSON"):
        load_input_rows(path)


def test_bad_fields_name_file_line_and_field(tmp_path):
    row = {
        "key": 1,
        "prompt": "p",
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"num_words": 5, "relation": "about"}],
    }
    path = _write(tmp_path, "in.jsonl", [json.dumps(row)])
    with pytest.raises(ConstraintError, match=r"in\.jsonl:1: field 'kwargs\[0\]\.relation': must be one of"):
        load_input_rows(path)
    path = _write(tmp_path, "in2.jsonl", [json.dumps({**row, "prompt": 3})])
    with pytest.raises(ConstraintError, match=r"in2\.jsonl:1: field 'prompt': must be a string"):
        load_input_rows(path)
    responses = _write(
        tmp_path,
        "resp.jsonl",
        [json.dumps({"prompt": "p", "response": "a"}), json.dumps({"prompt": "p", "response": "b"})],
    )
    ok_input = _write(tmp_path, "ok.jsonl", [json.dumps({**row, "kwargs": [{"num_words": 1, "relation": "at least"}]})])
    with pytest.raises(ConstraintError, match=r"resp\.jsonl:2: field 'prompt': duplicate prompt"):
        score(ok_input, responses)


def test_ifeval_suite_rejects_ifbench_ids_by_name():
    with pytest.raises(ConstraintError) as err:
        load_input_rows(IFBENCH)
    message = str(err.value)
    assert "IFBench_test.jsonl:1: field 'instruction_id_list[0]'" in message
    assert "'count:keywords_multiple' is not supported" in message
