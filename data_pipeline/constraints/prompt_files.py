"""Reading IFEval-format prompt files and response files, and joining them on the prompt text.

A prompt file has one JSON object per line: `key`, `prompt`, `instruction_id_list`, `kwargs` (IFEval's and
IFBench's format), optionally a `language` or language-prefixed ids (`languages.row_language`). Every id must
have a checker here (IFEval's 25 or IFBench's 58): unknown ids are listed all at once, with how many prompts use
each. A response file has `prompt`, `response` per line. With `skip_bad`, a row that cannot be scored (unknown
id, bad parameters, a language its checkers do not judge) is left out and counted by reason, never dropped
silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.constraints.constraint import ifeval_row_entries
from data_pipeline.constraints.ifbench import ifbench_registry, validate_ifbench_entry
from data_pipeline.constraints.languages import UnsupportedLanguageError, refuse_unjudged, split_language_prefix
from data_pipeline.constraints.mifeval_rules import has_rule, is_language_rule, refusal
from data_pipeline.constraints.params import IFEVAL_PARAM_SCHEMAS, ConstraintError, validate_params, where
from data_pipeline.errors import malformed_json
from data_pipeline.files import read_utf8


@dataclass(frozen=True)
class InputRow:
    key: object
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...]
    line: int
    language: str = "en"


@dataclass
class SkippedRows:
    """Rows left out under `skip_bad`: counts per reason, and the keys (or lines) of those rows."""

    counts: Counter = field(default_factory=Counter)
    keys: list = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # their prompt texts, so their responses count as skipped too

    def add(self, reason: str, key: object, prompt: object = None) -> None:
        self.counts[reason] += 1
        self.keys.append(key)
        if isinstance(prompt, str):
            self.prompts.append(prompt)


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line; a missing file or a malformed line is a ConstraintError."""
    path = Path(path)
    if not path.is_file():
        raise ConstraintError(f"{path}: no such file")
    records = []
    for line_number, text in enumerate(read_utf8(path).split("\n"), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text.rstrip("\r"))  # a row cut short breaks at its end, not on "line 2"
        except json.JSONDecodeError as err:
            raise ConstraintError(f"{path}:{line_number}: field '<line>': {malformed_json(err)}") from err
        if not isinstance(record, dict):
            raise ConstraintError(f"{path}:{line_number}: field '<line>': must be a JSON object")
        records.append((line_number, record))
    return records


def string_field(record: dict, name: str, path: Path, line: int) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise ConstraintError(f"{where(str(path), line, name)}: must be a string, got {value!r}")
    return value


def is_known_id(instruction_id: str) -> bool:
    """An IFEval or IFBench id, or a language-prefixed id with a rule for its language (`mifeval_rules`)."""
    prefix, base = split_language_prefix(instruction_id)
    if prefix is not None:
        return has_rule(prefix.lower(), base)
    return instruction_id in IFEVAL_PARAM_SCHEMAS or instruction_id in ifbench_registry()


def validate_entry(instruction_id: str, kwargs: dict, source: str, line: int, index: int) -> None:
    """The parameters of a known IFEval or IFBench id, checked against its schema / checker."""
    if instruction_id in IFEVAL_PARAM_SCHEMAS:
        schema = IFEVAL_PARAM_SCHEMAS[instruction_id]
        validate_params(schema, kwargs, type_=instruction_id, source=source, line=line, field_prefix=f"kwargs[{index}]")
    else:
        validate_ifbench_entry(instruction_id, kwargs, source, line, index)


def unknown_ids_error(path: Path, unknown: dict[str, list[int]]) -> ConstraintError:
    listing = "; ".join(
        f"{i!r} on {len(lines)} prompt(s), first line {lines[0]}" for i, lines in sorted(unknown.items())
    )
    prefixed = sorted(i for i in unknown if split_language_prefix(i)[0] is not None)
    if len(prefixed) == len(unknown):  # every unknown id names a language whose rule for it is not written here
        return UnsupportedLanguageError(
            f"{path}: {refusal(prefixed)}: {listing}. Leave those prompts out with --skip-bad."
        )
    return ConstraintError(
        f"{path}: {len(unknown)} instruction id(s) have no checker here (IFEval's 25 and IFBench's 58 ids do, and "
        f"M-IFEval's prefixed ids listed in mifeval_rules): {listing}. Fix the ids, or leave those prompts out "
        "with --skip-bad."
    )


def _ids_of(record: dict) -> list[str]:
    ids = record.get("instruction_id_list")
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def parse_row(path: Path, line: int, record: dict) -> InputRow:
    if "key" not in record:
        raise ConstraintError(f"{where(str(path), line, 'key')}: missing")
    prompt = string_field(record, "prompt", path, line)
    language, entries = ifeval_row_entries(record, str(path), line)
    for index, (instruction_id, kwargs, prefixed) in enumerate(entries):
        if not is_language_rule(instruction_id):  # those were validated against their own schema
            validate_entry(instruction_id, kwargs, str(path), line, index)
        if not prefixed:
            refuse_unjudged(instruction_id, language, str(path), line, f"instruction_id_list[{index}]")
    ids = tuple(entry.instruction_id for entry in entries)
    return InputRow(record["key"], prompt, ids, tuple(entry.kwargs for entry in entries), line, language)


def load_input_rows(path: str | Path, skipped: SkippedRows | None = None) -> list[InputRow]:
    """The rows of a prompt file, every id, its kwargs and the row's language validated.

    Without `skipped`, the first bad row raises (all unknown ids at once); with it, bad rows are counted there.
    """
    path = Path(path)
    records = read_jsonl(path)
    unknown: dict[str, list[int]] = {}
    for line, record in records:
        for instruction_id in _ids_of(record):
            if not is_known_id(instruction_id):
                unknown.setdefault(instruction_id, []).append(line)
    if unknown and skipped is None:
        raise unknown_ids_error(path, unknown)
    unknown_lines = {line for lines in unknown.values() for line in lines}
    rows = []
    for line, record in records:
        if line in unknown_lines:
            language_prefixed = any(split_language_prefix(i)[0] is not None for i in _ids_of(record))
            reason = "unsupported_language" if language_prefixed else "unknown_instruction_id"
            skipped.add(reason, record.get("key", f"line {line}"), record.get("prompt"))  # type: ignore[union-attr]
            continue
        try:
            rows.append(parse_row(path, line, record))
        except ConstraintError as err:
            if skipped is None:
                raise
            reason = "unsupported_language" if isinstance(err, UnsupportedLanguageError) else "bad_row"
            skipped.add(reason, record.get("key", f"line {line}"), record.get("prompt"))
    return rows


def load_responses(path: str | Path) -> dict[str, tuple[str, int]]:
    """prompt -> (response, line). Two prompts equal up to surrounding whitespace are an error: they would
    match the same input prompt, and which answer to score is ambiguous."""
    path = Path(path)
    responses: dict[str, tuple[str, int]] = {}
    first_line_by_stripped: dict[str, int] = {}
    for line, record in read_jsonl(path):
        prompt = string_field(record, "prompt", path, line)
        response = string_field(record, "response", path, line)
        if prompt.strip() in first_line_by_stripped:
            raise ConstraintError(
                f"{where(str(path), line, 'prompt')}: duplicate prompt, first given on "
                f"line {first_line_by_stripped[prompt.strip()]}"
            )
        first_line_by_stripped[prompt.strip()] = line
        responses[prompt] = (response, line)
    return responses


def match_prompts(rows: list[InputRow], responses: dict[str, tuple[str, int]]) -> dict[int, str]:
    """input line -> the response prompt it matches: the same text, else the same text once stripped (as
    IFBench's `get_response_for_prompt` tolerates stray leading/trailing whitespace)."""
    by_stripped = {prompt.strip(): prompt for prompt in responses}
    matches = {}
    for row in rows:
        prompt = row.prompt if row.prompt in responses else by_stripped.get(row.prompt.strip())
        if prompt is not None:
            matches[row.line] = prompt
    return matches
