"""IFEval and IFBench scoring: prompt- and instruction-level, strict and loose accuracy, with the semantics of
google-research `instruction_following_eval/evaluation_lib.py` and allenai/IFBench `evaluation_lib.py` (which
share the strict/loose rules), on the vendored checkers (`ifeval_lib`, `ifbench_lib`).

Inputs are the benchmarks' own formats: an input file (`key`, `prompt`, `instruction_id_list`, `kwargs` per
line) and a response file (`prompt`, `response` per line), joined on the prompt text; as in IFBench's
evaluation, a prompt that differs only by surrounding whitespace still matches. Unmatched rows are counted and
listed in the result, never dropped silently. A prompt without a response is left out of IFEval's accuracies
and counted as failing every instruction in IFBench's (each benchmark's own rule, see `Benchmark`).

Two IFBench ids need NLTK data the repo does not ship (`ifbench_checkers.NLTK_DATA_NEEDED`). Scoring a file
that uses them raises a ConstraintError naming the ids, unless `skip_unsupported` is set: then the prompts that
use them are left out and listed in the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.constraints.constraint import ifeval_row_entries
from data_pipeline.constraints.ifbench import ifbench_check, unsupported_reason, validate_ifbench_entry
from data_pipeline.constraints.ifeval import ifeval_check
from data_pipeline.constraints.params import IFEVAL_PARAM_SCHEMAS, ConstraintError, validate_params, where
from data_pipeline.files import ASSETS_DIR

# The prompts each suite scores, as shipped (provenance in assets/README.md).
SUITE_INPUTS = {
    "ifeval": ASSETS_DIR / "ifeval" / "input_data.jsonl",
    "ifbench": ASSETS_DIR / "ifbench" / "IFBench_test.jsonl",
}
ACCURACY_KEYS = ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc")


@dataclass(frozen=True)
class Benchmark:
    """What differs between the instruction-following benchmarks; reading, matching and scoring are shared."""

    name: str
    # (instruction id, kwargs, file, line, index in the row) -> None, or ConstraintError naming the field
    validate_entry: Callable[[str, dict, str, int, int], None]
    # (instruction id, kwargs, response, prompt) -> strict verdict
    check: Callable[[str, Mapping, str, str | None], bool]
    # instruction id -> why it cannot be checked here, or None
    unsupported_reason: Callable[[str], str | None]
    # AllenAI's IFBench evaluation scores a prompt without a response as failing all its instructions (its
    # `empty_output`); Google's IFEval evaluation has no such rule (it expects a response for every prompt),
    # so IFEval's accuracies are over the prompts that have one.
    missing_response_fails: bool


def _validate_ifeval_entry(instruction_id: str, kwargs: dict, source: str, line: int, index: int) -> None:
    if instruction_id not in IFEVAL_PARAM_SCHEMAS:
        raise ConstraintError(
            f"{where(source, line, f'instruction_id_list[{index}]')}: instruction id "
            f"{instruction_id!r} is not supported (only IFEval's 25 ids have checkers in the ifeval suite; "
            "IFBench ids are scored by the ifbench suite)"
        )
    validate_params(
        IFEVAL_PARAM_SCHEMAS[instruction_id],
        kwargs,
        type_=instruction_id,
        source=source,
        line=line,
        field_prefix=f"kwargs[{index}]",
    )


IFEVAL = Benchmark("ifeval", _validate_ifeval_entry, ifeval_check, lambda _id: None, missing_response_fails=False)
IFBENCH = Benchmark("ifbench", validate_ifbench_entry, ifbench_check, unsupported_reason, missing_response_fails=True)
BENCHMARKS = {benchmark.name: benchmark for benchmark in (IFEVAL, IFBENCH)}


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


def load_input_rows(path: str | Path, benchmark: Benchmark = IFEVAL) -> list[InputRow]:
    """Input rows of `benchmark`, every instruction id and its kwargs validated (None kwargs = absent)."""
    path = Path(path)
    rows = []
    for line, record in _read_jsonl(path):
        if "key" not in record:
            raise ConstraintError(f"{where(str(path), line, 'key')}: missing")
        prompt = _string_field(record, "prompt", path, line)
        entries = ifeval_row_entries(record, str(path), line)
        for index, (instruction_id, kwargs) in enumerate(entries):
            benchmark.validate_entry(instruction_id, kwargs, str(path), line, index)
        rows.append(InputRow(record["key"], prompt, tuple(i for i, _ in entries), tuple(k for _, k in entries), line))
    return rows


def split_unsupported(
    rows: list[InputRow], benchmark: Benchmark, source: str | Path, skip_unsupported: bool
) -> tuple[list[InputRow], list[InputRow], dict[str, str]]:
    """(rows to score, rows left out, {unsupported id: reason}); without `skip_unsupported` any
    unsupported id is a ConstraintError naming each id, its reason and the lines that use it."""
    lines_by_id: dict[str, list[int]] = {}
    kept, skipped = [], []
    for row in rows:
        unsupported = [i for i in row.instruction_id_list if benchmark.unsupported_reason(i) is not None]
        for instruction_id in unsupported:
            lines_by_id.setdefault(instruction_id, []).append(row.line)
        (skipped if unsupported else kept).append(row)
    reasons = {i: benchmark.unsupported_reason(i) for i in sorted(lines_by_id)}
    if reasons and not skip_unsupported:
        listing = "; ".join(
            f"{i!r} on {len(lines_by_id[i])} prompt(s), first line {lines_by_id[i][0]} ({reason})"
            for i, reason in reasons.items()
        )
        raise ConstraintError(
            f"{source}: {len(skipped)} prompt(s) use instruction ids that cannot be checked "
            f"here: {listing}. Skip those prompts explicitly (skip_unsupported=True; CLI: "
            "--skip-unsupported) to score the others."
        )
    return kept, skipped, reasons


def suite_input(suite: str, limit: int, scratch_dir: Path) -> Path:
    """The suite's prompt file, or (`limit` > 0) a copy of its first `limit` prompts in `scratch_dir`."""
    input_path = SUITE_INPUTS[suite]
    if not limit:
        return input_path
    out = scratch_dir / input_path.name
    out.write_text("".join(line + "\n" for line in input_path.read_text().splitlines()[:limit]))
    return out


def refuse_unsupported(input_path: str | Path, benchmark: Benchmark, skip_unsupported: bool) -> None:
    """Raises before any response is generated when `input_path` uses ids that cannot be checked here."""
    split_unsupported(load_input_rows(input_path, benchmark), benchmark, input_path, skip_unsupported)


def format_results(results: dict) -> str:
    """The four accuracies as an aligned table, and a line naming prompts skipped as unsupported."""
    lines = [f"{key:<{max(map(len, ACCURACY_KEYS))}}  {results[key]:.4f}" for key in ACCURACY_KEYS]
    if results["num_prompts_skipped_unsupported"]:
        lines.append(
            f"skipped {results['num_prompts_skipped_unsupported']} prompt(s) using "
            f"{', '.join(results['unsupported_instruction_ids'])} (not checkable here)"
        )
    return "\n".join(lines)


def load_responses(path: str | Path) -> dict[str, tuple[str, int]]:
    """prompt -> (response, line). Two prompts equal up to surrounding whitespace are an error: they would
    match the same input prompt, and which answer to score is ambiguous."""
    path = Path(path)
    responses: dict[str, tuple[str, int]] = {}
    first_line_by_stripped: dict[str, int] = {}
    for line, record in _read_jsonl(path):
        prompt = _string_field(record, "prompt", path, line)
        response = _string_field(record, "response", path, line)
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


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: the response with its first and/or last line removed, and with `*` removed."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    ]


def score_row(row: InputRow, response: str, benchmark: Benchmark = IFEVAL) -> tuple[list[bool], list[bool]]:
    """(strict, loose) verdict per instruction of `row`."""
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(row.instruction_id_list, row.kwargs, strict=True):
        strict.append(benchmark.check(instruction_id, kwargs, response, row.prompt))
        loose.append(any(benchmark.check(instruction_id, kwargs, v, row.prompt) for v in variants))
    return strict, loose


def score(
    input_path: str | Path, responses_path: str | Path, benchmark: Benchmark = IFEVAL, skip_unsupported: bool = False
) -> dict:
    """Accuracies of the responses in `responses_path` on the prompts of `input_path`, by `benchmark`'s rules."""
    rows, skipped, unsupported = split_unsupported(
        load_input_rows(input_path, benchmark), benchmark, input_path, skip_unsupported
    )
    if not rows:
        raise ConstraintError(f"{input_path}: no prompt left to score ({len(skipped)} skipped as unsupported)")
    responses = load_responses(responses_path)
    # Skipped prompts are matched too, so that their responses are not reported as having no prompt.
    matches = match_prompts(rows + skipped, responses)
    if not any(row.line in matches for row in rows):
        raise ConstraintError(f"{responses_path}: no response matches any prompt of {input_path}")
    prompt_strict, prompt_loose, inst_strict, inst_loose = [], [], [], []
    missing_keys = []
    for row in rows:
        if row.line in matches:
            strict, loose = score_row(row, responses[matches[row.line]][0], benchmark)
        else:
            missing_keys.append(row.key)
            if not benchmark.missing_response_fails:
                continue
            strict = loose = [False] * len(row.instruction_id_list)
        prompt_strict.append(all(strict))
        prompt_loose.append(all(loose))
        inst_strict.extend(strict)
        inst_loose.extend(loose)
    matched_prompts = set(matches.values())
    unmatched_lines = sorted(line for prompt, (_, line) in responses.items() if prompt not in matched_prompts)
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
        "missing_responses_count_as_failed": benchmark.missing_response_fails,
        "unsupported_instruction_ids": unsupported,
        "num_prompts_skipped_unsupported": len(skipped),
        "prompt_keys_skipped_unsupported": [row.key for row in skipped],
    }
