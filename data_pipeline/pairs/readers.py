"""Readers for the raw inputs of `build-pairs`: JSON / JSONL (optionally gzip), instructions and responses.

Rows are numbered from 1: the line of a JSONL file, or the item of a top-level JSON list. Bad rows raise
`DataError`; with a `BadRows` collector (`--skip-bad`) they are recorded and skipped instead. A JSONL line that is
not UTF-8 or not JSON is such a row (reasons in `UNPARSED_REASONS`: counted, never yielded).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from data_pipeline.errors import DataFileError, malformed_json
from data_pipeline.pairs.instructions import Instruction
from data_pipeline.pairs.schema import DataError, PairRecord

T = TypeVar("T")
# Reasons of JSONL lines that never become a row (callers count them as input rows themselves).
UNPARSED_REASONS = ("not_utf8", "malformed_json")
# Messages of skipped rows kept in stats.json (the counts cover all of them).
MAX_BAD_EXAMPLES = 50


@dataclass
class BadRows:
    """What `--skip-bad` skipped: counts per reason and the first messages."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        self.counts[err.reason] += 1
        if len(self.examples) < MAX_BAD_EXAMPLES:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": self.examples}


def guard(bad: BadRows | None, fn: Callable[[], T]) -> T | None:
    """Run `fn`; on DataError raise (bad is None) or record it and return None."""
    try:
        return fn()
    except DataError as err:
        if bad is None:
            raise
        bad.add(err)
        return None


def _read_bytes(path: str) -> bytes:
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return Path(path).read_bytes()


def _not_utf8(path: str, line_no: int, err: UnicodeDecodeError) -> DataError:
    return DataError(
        path,
        line_no,
        "<text>",
        f"not UTF-8: byte {err.object[err.start]:#04x} at column {err.start + 1}",
        reason="not_utf8",
    )


def iter_json_rows(path: str, bad: BadRows | None = None) -> Iterator[tuple[int, Any]]:
    """(row number, parsed object) for each row of a JSONL file or a top-level JSON list."""
    if not Path(path).is_file():
        raise DataFileError(f"{path}: no such input file")
    data = _read_bytes(path)
    if data.lstrip().startswith(b"["):
        try:
            items = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise _not_utf8(path, data[: err.start].count(b"\n") + 1, err) from err
        except json.JSONDecodeError as err:
            raise DataError(path, err.lineno, "<json>", malformed_json(err), reason="malformed_json") from err
        yield from enumerate(items, start=1)
        return
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            guard(bad, lambda err=err, n=line_no: _raise(_not_utf8(path, n, err)))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            guard(
                bad,
                lambda err=err, n=line_no: _raise(
                    DataError(path, n, "<json>", malformed_json(err), reason="malformed_json")
                ),
            )
            continue
        yield line_no, obj


def _raise(err: Exception):
    raise err


def parse_instruction(obj: Any, source: str, line: int) -> Instruction:
    """Our instruction schema (`id`, `turns`, `constraints`) or an IFEval row (`key`, `prompt`, ...)."""
    if isinstance(obj, dict) and "instruction_id_list" in obj:
        return Instruction.from_ifeval_row(obj, source, line)
    if isinstance(obj, dict) and "turns" in obj:
        return Instruction.from_json(obj, source, line)
    raise DataError(
        source,
        line,
        "<row>",
        "expected an instruction ('id', 'turns', 'constraints') or an IFEval row "
        "('key', 'prompt', 'instruction_id_list', 'kwargs')",
        reason="missing_field",
    )


def read_instructions(path: str, bad: BadRows | None = None) -> list[Instruction]:
    instructions: list[Instruction] = []
    seen: dict[str, int] = {}
    for line, obj in iter_json_rows(path, bad):
        instruction = guard(bad, lambda obj=obj, line=line: parse_instruction(obj, path, line))
        if instruction is None:
            continue
        if instruction.id in seen:
            guard(
                bad,
                lambda i=instruction, line=line: _raise(
                    DataError(
                        path,
                        line,
                        "id",
                        f"duplicate instruction id {i.id!r} (first on line {seen[i.id]})",
                        reason="duplicate_instruction",
                    )
                ),
            )
            continue
        seen[instruction.id] = line
        instructions.append(instruction)
    return instructions


@dataclass(frozen=True)
class RawResponse:
    """A response row before it is matched to its instruction (by `key`/`instruction_id`, else by prompt text)."""

    key: str | None
    prompt: str | None
    text: str
    sample_id: str | None
    source: str
    line: int
    sampler: dict
    history: tuple[str, ...] = ()  # answers to the earlier user turns of a conversation (`responses` but the last)


def _turn_answers(obj: dict, text: str, source: str, line: int) -> tuple[str, ...]:
    """The answers before the last of a conversation row (`responses`: one answer per user turn, the last being
    `response`, as `rpo-jax generate` writes for conversation prompts); () when the row has none."""
    answers = obj.get("responses")
    if answers is None:
        return ()
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(source, line, "responses", f"must be a non-empty list of strings, got {answers!r:.80}")
    if answers[-1] != text:
        raise DataError(source, line, "responses", "its last answer must be the row's response")
    return tuple(answers[:-1])


def parse_response(obj: Any, source: str, line: int) -> RawResponse:
    if not isinstance(obj, dict):
        raise DataError(source, line, "<row>", f"must be an object, got {obj!r:.80}")
    text_key = "response" if "response" in obj else "text" if "text" in obj else None
    if text_key is None:
        raise DataError(source, line, "response", "missing", reason="missing_field")
    text = obj[text_key]
    if not isinstance(text, str):
        raise DataError(source, line, text_key, f"must be a string, got {text!r:.80}")
    if not text.strip():
        raise DataError(source, line, text_key, "is empty", reason="empty_response")
    key = obj.get("key", obj.get("instruction_id"))
    prompt = obj.get("prompt")
    if key is None and prompt is None:
        raise DataError(
            source,
            line,
            "key",
            "missing: a response needs 'key' / 'instruction_id' or 'prompt'",
            reason="missing_field",
        )
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise DataError(source, line, "key", f"must be a string or integer, got {key!r:.80}")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(source, line, "prompt", f"must be a string, got {prompt!r:.80}")
    sample_id = obj.get("sample_id", obj.get("response_id"))
    sampler = {
        k: v
        for k, v in obj.items()
        if k not in ("key", "instruction_id", "prompt", text_key, "sample_id", "response_id", "responses")
    }
    return RawResponse(
        None if key is None else str(key),
        prompt,
        text,
        None if sample_id is None else str(sample_id),
        source,
        line,
        sampler,
        _turn_answers(obj, text, source, line),
    )


def read_responses(path: str, bad: BadRows | None = None) -> tuple[list[RawResponse], int]:
    """(valid responses, number of rows read); rows that fail are raised or recorded in `bad`."""
    responses, rows = [], 0
    # Lines that are not UTF-8 or not JSON never reach this loop, but they are input rows to account for.
    unparsed_before = unparsed_count(bad)
    for line, obj in iter_json_rows(path, bad):
        rows += 1
        parsed = guard(bad, lambda obj=obj, line=line: parse_response(obj, path, line))
        if parsed is not None:
            responses.append(parsed)
    return responses, rows + unparsed_count(bad) - unparsed_before


def unparsed_count(bad: BadRows | None) -> int:
    """How many lines `bad` recorded as never becoming a row (see UNPARSED_REASONS)."""
    return sum(bad.counts[reason] for reason in UNPARSED_REASONS) if bad is not None else 0


def read_pairs(path: str) -> list[PairRecord]:
    """Read and validate a `pairs.jsonl` file."""
    return [PairRecord.from_json(obj, path, line) for line, obj in iter_json_rows(path)]
