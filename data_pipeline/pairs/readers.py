"""Readers for the raw inputs of `build-pairs`: JSON / JSONL (optionally gzip), instructions and responses.

Rows are numbered from 1: the line of a JSONL file, or the item of a top-level JSON list. Bad rows raise
`DataError`; with a `BadRows` collector (`--skip-bad`) they are recorded and skipped instead.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from data_pipeline.errors import UserError
from data_pipeline.pairs.instructions import Instruction
from data_pipeline.pairs.schema import DataError, PairRecord

T = TypeVar("T")


class InputFileError(UserError, FileNotFoundError):
    """An input file that does not exist."""


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


def _open_text(path: str):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_json_rows(path: str, bad: BadRows | None = None) -> Iterator[tuple[int, Any]]:
    """(row number, parsed object) for each row of a JSONL file or a top-level JSON list."""
    if not Path(path).is_file():
        raise InputFileError(f"{path}: no such input file")
    with _open_text(path) as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(path, err.lineno, "<json>", f"malformed JSON: {err.msg}", reason="malformed_json") from err
        yield from enumerate(items, start=1)
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            guard(
                bad,
                lambda err=err, n=line_no: _raise(
                    DataError(path, n, "<json>", f"malformed JSON: {err.msg}", reason="malformed_json")
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
        if k not in ("key", "instruction_id", "prompt", text_key, "sample_id", "response_id")
    }
    return RawResponse(
        None if key is None else str(key),
        prompt,
        text,
        None if sample_id is None else str(sample_id),
        source,
        line,
        sampler,
    )


def read_responses(path: str, bad: BadRows | None = None) -> tuple[list[RawResponse], int]:
    """(valid responses, number of rows read); rows that fail are raised or recorded in `bad`."""
    responses, rows = [], 0
    # Malformed JSON lines never reach this loop, but they are input rows to account for.
    malformed_before = bad.counts["malformed_json"] if bad is not None else 0
    for line, obj in iter_json_rows(path, bad):
        rows += 1
        parsed = guard(bad, lambda obj=obj, line=line: parse_response(obj, path, line))
        if parsed is not None:
            responses.append(parsed)
    malformed = (bad.counts["malformed_json"] - malformed_before) if bad is not None else 0
    return responses, rows + malformed


def read_pairs(path: str) -> list[PairRecord]:
    """Read and validate a `pairs.jsonl` file."""
    return [PairRecord.from_json(obj, path, line) for line, obj in iter_json_rows(path)]
