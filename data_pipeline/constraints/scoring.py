"""Instruction-following scoring of a responses file on an IFEval-format prompt file: prompt- and
instruction-level, strict and loose accuracy, with the semantics of google-research
`instruction_following_eval/evaluation_lib.py` and allenai/IFBench `evaluation_lib.py` (which share the
strict/loose rules), on the checkers of `ifeval` and `ifbench` (a prompt file may use ids of both).

Responses are joined to prompts on the prompt text (`prompt_files`); as in IFBench's evaluation, a prompt that
differs only by surrounding whitespace still matches. Prompts without a response and responses without a prompt
are an error unless `allow_missing`; then they are counted and listed, and a prompt without a response is left
out of the accuracies (IFEval's rule) or fails every instruction (IFBench's `empty_output`, see `Benchmark`).

Two IFBench ids need NLTK data the repo does not ship (`ifbench.NLTK_DATA_NEEDED`). Scoring a file that uses them
raises a ConstraintError naming the ids, unless `skip_unsupported` is set: then those prompts are left out and
listed. Per-prompt verdicts and the per-id / per-number-of-constraints summaries are in `score_report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.constraints import ifbench
from data_pipeline.constraints.ifeval import ifeval_check
from data_pipeline.constraints.mifeval_rules import is_language_rule, language_rule_check
from data_pipeline.constraints.params import IFEVAL_PARAM_SCHEMAS, ConstraintError
from data_pipeline.constraints.prompt_files import InputRow, SkippedRows, load_input_rows, load_responses, match_prompts
from data_pipeline.constraints.score_report import PromptVerdicts, summarize
from data_pipeline.files import ASSETS_DIR, read_utf8

# The prompts each suite scores, as shipped (provenance in assets/README.md).
SUITE_INPUTS = {
    "ifeval": ASSETS_DIR / "ifeval" / "input_data.jsonl",
    "ifbench": ASSETS_DIR / "ifbench" / "IFBench_test.jsonl",
}


@dataclass(frozen=True)
class Benchmark:
    """The one rule that differs between the benchmarks' evaluations."""

    name: str
    # AllenAI's IFBench evaluation scores a prompt without a response as failing all its instructions (its
    # `empty_output`); Google's IFEval evaluation has no such rule (it expects a response for every prompt),
    # so IFEval's accuracies are over the prompts that have one.
    missing_response_fails: bool


IFEVAL = Benchmark("ifeval", missing_response_fails=False)
IFBENCH = Benchmark("ifbench", missing_response_fails=True)
BENCHMARKS = {benchmark.name: benchmark for benchmark in (IFEVAL, IFBENCH)}


@dataclass(frozen=True)
class _Prompt:
    """What `match_prompts` reads of a row: its prompt text and a line to key the match by."""

    prompt: str
    line: int


def check_instruction(instruction_id: str, kwargs: Mapping, response: str, prompt: str | None) -> bool:
    """The strict verdict of one IFEval or IFBench instruction, or of an M-IFEval rule for one language."""
    if is_language_rule(instruction_id):
        return language_rule_check(instruction_id, kwargs, response)
    if instruction_id in IFEVAL_PARAM_SCHEMAS:
        return ifeval_check(instruction_id, kwargs, response, prompt)
    return ifbench.ifbench_check(instruction_id, kwargs, response, prompt)


def unsupported_reason(instruction_id: str) -> str | None:
    if instruction_id in IFEVAL_PARAM_SCHEMAS or is_language_rule(instruction_id):
        return None
    return ifbench.unsupported_reason(instruction_id)


def split_unsupported(
    rows: list[InputRow], source: str | Path, skip_unsupported: bool
) -> tuple[list[InputRow], list[InputRow], dict[str, str]]:
    """(rows to score, rows left out, {unsupported id: reason}); without `skip_unsupported` any
    unsupported id is a ConstraintError naming each id, its reason and the lines that use it."""
    lines_by_id: dict[str, list[int]] = {}
    kept, skipped = [], []
    for row in rows:
        unsupported = [i for i in row.instruction_id_list if unsupported_reason(i) is not None]
        for instruction_id in unsupported:
            lines_by_id.setdefault(instruction_id, []).append(row.line)
        (skipped if unsupported else kept).append(row)
    reasons = {i: unsupported_reason(i) for i in sorted(lines_by_id)}
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
    return limited_input(SUITE_INPUTS[suite], limit, scratch_dir)


def limited_input(input_path: str | Path, limit: int, scratch_dir: Path) -> Path:
    """`input_path`, or (`limit` > 0) a copy of its first `limit` lines in `scratch_dir`."""
    input_path = Path(input_path)
    if not limit:
        return input_path
    out = scratch_dir / input_path.name
    out.write_text("".join(line + "\n" for line in read_utf8(input_path).splitlines()[:limit]), encoding="utf-8")
    return out


def refuse_unsupported(input_path: str | Path, skip_unsupported: bool, skip_bad: bool = False) -> None:
    """Raises before any response is generated when `input_path` has rows that cannot be scored."""
    rows = load_input_rows(input_path, SkippedRows() if skip_bad else None)
    split_unsupported(rows, input_path, skip_unsupported)


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


def score_row(row: InputRow, response: str) -> tuple[list[bool], list[bool]]:
    """(strict, loose) verdict per instruction of `row`."""
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(row.instruction_id_list, row.kwargs, strict=True):
        strict.append(check_instruction(instruction_id, kwargs, response, row.prompt))
        loose.append(any(check_instruction(instruction_id, kwargs, v, row.prompt) for v in variants))
    return strict, loose


def _refuse_missing(input_path, responses_path, missing_keys: list, unmatched_lines: list[int]) -> None:
    problems = []
    if missing_keys:
        problems.append(f"{len(missing_keys)} prompt(s) of {input_path} have no response (keys {missing_keys[:5]})")
    if unmatched_lines:
        problems.append(
            f"{len(unmatched_lines)} response(s) of {responses_path} match no prompt (lines {unmatched_lines[:5]})"
        )
    if problems:
        raise ConstraintError(
            "; ".join(problems) + ". Pass --allow-missing (allow_missing=True) to score the prompts that match."
        )


def score_detailed(
    input_path: str | Path,
    responses_path: str | Path,
    benchmark: Benchmark = IFEVAL,
    skip_unsupported: bool = False,
    skip_bad: bool = False,
    allow_missing: bool = False,
) -> tuple[dict, list[PromptVerdicts]]:
    """(accuracies and summaries, per-prompt verdicts) of `responses_path` on the prompts of `input_path`."""
    bad = SkippedRows()
    rows, skipped, unsupported = split_unsupported(
        load_input_rows(input_path, bad if skip_bad else None), input_path, skip_unsupported
    )
    if not rows:
        raise ConstraintError(
            f"{input_path}: no prompt left to score ({len(skipped)} skipped as unsupported, {len(bad.keys)} as bad)"
        )
    responses = load_responses(responses_path)
    matches = match_prompts(rows, responses)
    missing_keys = [row.key for row in rows if row.line not in matches]
    # The responses of prompts left out (unsupported ids, bad rows under skip_bad) are skipped with them: they
    # do not "match no prompt", so allow_missing keeps meaning only that a response or prompt is missing.
    left_out = [row.prompt for row in skipped] + bad.prompts
    skipped_prompts = set(match_prompts([_Prompt(p, n) for n, p in enumerate(left_out)], responses).values())
    matched_prompts = set(matches.values())
    skipped_lines = sorted(line for prompt, (_, line) in responses.items() if prompt in skipped_prompts)
    unmatched_lines = sorted(
        line for prompt, (_, line) in responses.items() if prompt not in matched_prompts | skipped_prompts
    )
    if not allow_missing:
        _refuse_missing(input_path, responses_path, missing_keys, unmatched_lines)
    if not any(row.line in matches for row in rows):
        raise ConstraintError(f"{responses_path}: no response matches any prompt of {input_path} left to score")
    per_prompt = []
    for row in rows:
        if row.line in matches:
            strict, loose = score_row(row, responses[matches[row.line]][0])
        elif benchmark.missing_response_fails:
            strict = loose = [False] * len(row.instruction_id_list)
        else:
            strict = loose = None
        per_prompt.append(PromptVerdicts(row, row.line in matches, strict, loose))
    results = {
        **summarize(per_prompt),
        "num_prompts_without_response": len(missing_keys),
        "prompt_keys_without_response": missing_keys,
        "num_responses_without_prompt": len(unmatched_lines),
        "response_lines_without_prompt": unmatched_lines,
        "num_responses_skipped": len(skipped_lines),
        "response_lines_skipped": skipped_lines,
        "missing_responses_count_as_failed": benchmark.missing_response_fails,
        "unsupported_instruction_ids": unsupported,
        "num_prompts_skipped_unsupported": len(skipped),
        "prompt_keys_skipped_unsupported": [row.key for row in skipped],
        "num_prompts_skipped_bad": len(bad.keys),
        "prompts_skipped_bad_by_reason": dict(sorted(bad.counts.items())),
        "prompt_keys_skipped_bad": bad.keys,
    }
    return results, per_prompt


def score(
    input_path: str | Path,
    responses_path: str | Path,
    benchmark: Benchmark = IFEVAL,
    skip_unsupported: bool = False,
    skip_bad: bool = False,
    allow_missing: bool = False,
) -> dict:
    """Accuracies of the responses in `responses_path` on the prompts of `input_path`, by `benchmark`'s rules."""
    return score_detailed(input_path, responses_path, benchmark, skip_unsupported, skip_bad, allow_missing)[0]
