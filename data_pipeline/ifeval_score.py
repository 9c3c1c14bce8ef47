"""IFEval scoring: prompt- and instruction-level, strict and loose accuracy (google-research
`instruction_following_eval/evaluation_lib.py` semantics), on the vendored IFEval checkers.

Inputs are IFEval's own formats: an input file (`key`, `prompt`, `instruction_id_list`, `kwargs` per line;
IFBench uses the same fields) and a response file (`prompt`, `response` per line), joined on the prompt text.
Unmatched rows are counted and listed in the result, never dropped silently; accuracies are over matched
prompts.

IFBench's 58 instruction ids are NOT supported: the vendored library holds only IFEval's 25 checkers, and
scoring a file that uses any other id raises a ConstraintError naming the id, file, line and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.constraint_params import IFEVAL_PARAM_SCHEMAS, ConstraintError, validate_params, where
from data_pipeline.constraints import ifeval_row_entries
from data_pipeline.ifeval_checkers import ifeval_check


@dataclass(frozen=True)
class InputRow:
    key: object
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...]
    line: int


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                message = f"{path}:{line_number}: field '<line>': malformed JSON ({err})"
                raise ConstraintError(message) from err
            if not isinstance(record, dict):
                raise ConstraintError(f"{path}:{line_number}: field '<line>': must be a JSON object")
            records.append((line_number, record))
    return records


def _string_field(record: dict, name: str, path: Path, line: int) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise ConstraintError(f"{where(str(path), line, name)}: must be a string, got {value!r}")
    return value


def load_input_rows(path: str | Path) -> list[InputRow]:
    """IFEval/IFBench input rows, every instruction id and its kwargs validated (None kwargs = absent)."""
    path = Path(path)
    rows = []
    for line, record in _read_jsonl(path):
        if "key" not in record:
            raise ConstraintError(f"{where(str(path), line, 'key')}: missing")
        prompt = _string_field(record, "prompt", path, line)
        entries = ifeval_row_entries(record, str(path), line)
        cleaned = []
        for index, (instruction_id, kwargs) in enumerate(entries):
            if instruction_id not in IFEVAL_PARAM_SCHEMAS:
                raise ConstraintError(
                    f"{where(str(path), line, f'instruction_id_list[{index}]')}: instruction id "
                    f"{instruction_id!r} is not supported (only IFEval's 25 ids have checkers here; "
                    "IFBench ids are not supported)")
            validate_params(IFEVAL_PARAM_SCHEMAS[instruction_id], kwargs, type_=instruction_id,
                            source=str(path), line=line, field_prefix=f"kwargs[{index}]")
            cleaned.append(kwargs)
        rows.append(InputRow(record["key"], prompt, tuple(i for i, _ in entries), tuple(cleaned), line))
    return rows


def load_responses(path: str | Path) -> dict[str, tuple[str, int]]:
    """prompt -> (response, line). A prompt given twice is an error (which answer to score is ambiguous)."""
    path = Path(path)
    responses: dict[str, tuple[str, int]] = {}
    for line, record in _read_jsonl(path):
        prompt = _string_field(record, "prompt", path, line)
        response = _string_field(record, "response", path, line)
        if prompt in responses:
            raise ConstraintError(f"{where(str(path), line, 'prompt')}: duplicate prompt, first given on "
                                  f"line {responses[prompt][1]}")
        responses[prompt] = (response, line)
    return responses


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: the response with its first and/or last line removed, and with `*` removed."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""), remove_first, remove_last, remove_both,
            remove_first.replace("*", ""), remove_last.replace("*", ""), remove_both.replace("*", "")]


def score_row(row: InputRow, response: str) -> tuple[list[bool], list[bool]]:
    """(strict, loose) verdict per instruction of `row`."""
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(row.instruction_id_list, row.kwargs, strict=True):
        strict.append(ifeval_check(instruction_id, kwargs, response, row.prompt))
        loose.append(any(ifeval_check(instruction_id, kwargs, v, row.prompt) for v in variants))
    return strict, loose


def score(input_path: str | Path, responses_path: str | Path) -> dict:
    """IFEval accuracies of the responses in `responses_path` on the prompts of `input_path`."""
    rows = load_input_rows(input_path)
    responses = load_responses(responses_path)
    input_prompts = {row.prompt for row in rows}
    prompt_strict, prompt_loose, inst_strict, inst_loose = [], [], [], []
    missing_keys = []
    for row in rows:
        if row.prompt not in responses:
            missing_keys.append(row.key)
            continue
        strict, loose = score_row(row, responses[row.prompt][0])
        prompt_strict.append(all(strict))
        prompt_loose.append(all(loose))
        inst_strict.extend(strict)
        inst_loose.extend(loose)
    unmatched_lines = sorted(line for prompt, (_, line) in responses.items() if prompt not in input_prompts)
    if not prompt_strict:
        raise ConstraintError(f"{responses_path}: no response matches any prompt of {input_path}")
    return {
        "prompt_level_strict_acc": sum(prompt_strict) / len(prompt_strict),
        "prompt_level_loose_acc": sum(prompt_loose) / len(prompt_loose),
        "inst_level_strict_acc": sum(inst_strict) / len(inst_strict),
        "inst_level_loose_acc": sum(inst_loose) / len(inst_loose),
        "num_prompts_scored": len(prompt_strict),
        "num_instructions_scored": len(inst_strict),
        "num_prompts_without_response": len(missing_keys),
        "prompt_keys_without_response": missing_keys,
        "num_responses_without_prompt": len(unmatched_lines),
        "response_lines_without_prompt": unmatched_lines,
    }
