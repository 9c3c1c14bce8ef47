"""IFEval scorer on the registry package's checkers: reproduces Google's published GPT-4 numbers, differs from the
package's own verdicts only where we fixed a rule; missing / unmatched rows are an error unless allowed; rejects
bad input, listing unknown ids at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.constraints import ConstraintError, ifeval
from data_pipeline.constraints.prompt_files import InputRow, load_input_rows, load_responses, match_prompts
from data_pipeline.constraints.scoring import loose_variants, score, score_row

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"
IFEVAL_INPUT = ASSETS / "ifeval" / "input_data.jsonl"
IFEVAL_FILTERED = ASSETS / "ifeval" / "filtered_input_data.jsonl"
GPT4 = ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"
IFBENCH = ASSETS / "ifbench" / "IFBench_test.jsonl"


def test_reproduces_published_gpt4_numbers():
    result = score(IFEVAL_FILTERED, GPT4, allow_missing=True)
    # Google's IFEval GPT-4 responses: prompt-level strict 0.7722 / loose 0.7981 (417 and 431 of 540 prompts).
    assert result["prompt_level_strict_acc"] == pytest.approx(0.7722, abs=0.002) == 417 / 540
    assert result["prompt_level_loose_acc"] == pytest.approx(0.7981, abs=0.002) == 431 / 540
    assert result["num_prompts_scored"] == 540 and result["num_instructions_scored"] == 832
    assert result["inst_level_strict_acc"] == 697 / 832 and result["inst_level_loose_acc"] == 713 / 832
    # Google's response file has one response whose prompt is not in the input file.
    assert result["response_lines_without_prompt"] == [340]
    assert result["num_prompts_without_response"] == 0
    assert result["by_num_constraints"]["1"]["prompts"] + result["by_num_constraints"]["2"]["prompts"] < 540
    assert sum(v["instructions"] for v in result["by_instruction_id"].values()) == 832


def _package_verdict(instruction_id, kwargs, response, prompt):
    """The registry package's checker as it is (our letter_frequency rule kept: the package's is random)."""
    if not response.strip():
        return False
    if instruction_id == "keywords:letter_frequency" and not kwargs["letter"].isalpha():
        return ifeval.ifeval_check(instruction_id, kwargs, response, prompt)
    checker, _ = ifeval.build_checker(instruction_id, kwargs, prompt)
    return ifeval.checker_verdict(checker, response)


# Prompts whose verdicts differ from the package's (= Google's) checker, and why: our english_capital asks
# langdetect about the lower-cased text (upper-case text is misread: see ifeval.py). Totals are unchanged.
CASE_FIX_DIFFERENCES = {
    3456: True,  # an upper-case English list of names: langdetect says 'de' as written, 'en' lower-cased
    3617: False,  # "1. PIXEL PRODIGY\n2. CODE CONSTRUCT\n3. DIGITAL DYNAMICS": 'en' as written, 'ca' lower-cased
}


def test_verdicts_differ_from_the_package_only_where_a_rule_was_fixed():
    rows = load_input_rows(IFEVAL_FILTERED)
    responses = load_responses(GPT4)
    matches = match_prompts(rows, responses)
    differing = {}
    for row in rows:
        response = responses[matches[row.line]][0]
        for instruction_id, kwargs in zip(row.instruction_id_list, row.kwargs, strict=True):
            ours = ifeval.ifeval_check(instruction_id, kwargs, response, row.prompt)
            if ours != _package_verdict(instruction_id, kwargs, response, row.prompt):
                assert instruction_id == "change_case:english_capital", (row.key, instruction_id)
                differing[row.key] = ours
    assert differing == CASE_FIX_DIFFERENCES


def test_missing_prompts_and_responses_are_an_error_unless_allowed():
    with pytest.raises(ConstraintError) as err:
        score(IFEVAL_INPUT, GPT4)
    message = str(err.value)
    assert "1 prompt(s) of" in message and "[2785]" in message
    assert "1 response(s) of" in message and "[340]" in message and "--allow-missing" in message
    result = score(IFEVAL_INPUT, GPT4, allow_missing=True)
    assert result["prompt_keys_without_response"] == [2785]
    assert result["num_prompts_without_response"] == 1
    assert result["num_prompts_scored"] == 540


def test_no_matching_response_at_all_is_an_error(tmp_path):
    responses = _write(tmp_path, "resp.jsonl", [json.dumps({"prompt": "not an IFEval prompt", "response": "x"})])
    with pytest.raises(ConstraintError, match="no response matches any prompt"):
        score(IFEVAL_FILTERED, responses, allow_missing=True)


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


def test_unknown_ids_are_listed_at_once_with_counts(tmp_path):
    rows = [
        {"key": k, "prompt": f"p{k}", "instruction_id_list": [i], "kwargs": [{}]}
        for k, i in ((1, "made:up"), (2, "punctuation:no_comma"), (3, "made:up"), (4, "other:id"))
    ]
    path = _write(tmp_path, "in.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(ConstraintError) as err:
        load_input_rows(path)
    message = str(err.value)
    assert "2 instruction id(s) have no checker" in message
    assert "'made:up' on 2 prompt(s), first line 1" in message and "'other:id' on 1 prompt(s), first line 4" in message


def test_ifeval_and_ifbench_ids_score_together(tmp_path):
    row = {
        "key": "mixed",
        "prompt": "Write about cats.",
        "instruction_id_list": ["punctuation:no_comma", "format:no_whitespace"],
        "kwargs": [{}, {}],
    }
    inputs = _write(tmp_path, "in.jsonl", [json.dumps(row)])
    responses = _write(tmp_path, "r.jsonl", [json.dumps({"prompt": "Write about cats.", "response": "Cats."})])
    result = score(inputs, responses)
    assert result["inst_level_strict_acc"] == 1.0 and set(result["by_instruction_id"]) == set(
        row["instruction_id_list"]
    )
