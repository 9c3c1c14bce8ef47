"""Multi-turn prompt files: conversations whose every turn is judged, recognised by their columns.

Two layouts (docs: data_pipeline/README.md, "Multi-turn evaluation"):

- **Multi-IF** (facebookresearch/Multi-IF's release, CSV or JSONL): `key`, `language` (a name such as "French",
  or a code), and per turn k = 1, 2, 3: `turn_k_prompt` (a chat message as JSON, `{"role": "user", "content":
  ...}`; "None" or empty when the conversation has no turn k), `turn_k_instruction_id_list` and `turn_k_kwargs`
  (JSON lists, the kwargs a list of JSON objects or of JSON strings as released): the constraints judged at turn k,
  cumulative as Multi-IF writes them. Cells may hold the JSON text (the release) or the parsed values.
- **System prompt + turns** (SysBench-like, JSONL): `key`, optional `language`, optional `system` (the system
  prompt) with `system_instruction_id_list` / `system_kwargs` (the constraints it states, judged at every turn,
  as SysBench checks a system message's constraints throughout the dialogue), and `turns`: a list of
  `{"prompt": user message, "instruction_id_list": [...], "kwargs": [...]}` (the turn's own constraints, optional).

Each turn's constraints are validated as an IFEval-format row (`prompt_files.parse_row`: known ids, parameters,
the language's rules). A conversation that cannot be read (a malformed cell, no turns) is bad as a whole; a turn
whose constraints cannot be judged is bad alone (the conversation is still generated, its other turns judged);
`skip_bad` leaves them out and counts them, by reason.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.constraints.languages import UnsupportedLanguageError, split_language_prefix
from data_pipeline.constraints.params import ConstraintError, where
from data_pipeline.constraints.prompt_files import InputRow, is_known_id, parse_row, read_jsonl, unknown_ids_error
from data_pipeline.errors import malformed_json
from data_pipeline.files import read_utf8

MULTI_IF = "multi_if"
_TURN_PROMPT = re.compile(r"turn_(\d+)_prompt")
SYSTEM_AND_TURNS = "system_and_turns"
# Multi-IF names its languages; the checkers' language scope (`languages.py`) reads ISO 639-1 codes.
LANGUAGE_CODES = {
    "English": "en",
    "French": "fr",
    "Spanish": "es",
    "Portuguese": "pt",
    "Italian": "it",
    "German": "de",
    "Russian": "ru",
    "Chinese": "zh",
    "Hindi": "hi",
    "Thai": "th",
    "Vietnamese": "vi",
}


@dataclass(frozen=True)
class Turn:
    prompt: str  # the user message
    judged: InputRow | None  # the constraints judged at this turn; None: none, or skipped as bad


@dataclass(frozen=True)
class Conversation:
    key: object
    language: str
    system: str | None
    turns: tuple[Turn, ...]
    line: int


@dataclass
class SkippedTurns:
    """What `skip_bad` left out: whole conversations and single turns, counted by reason."""

    conversations: list = field(default_factory=list)  # keys
    turns: list = field(default_factory=list)  # {"key", "turn", "reason"}

    def by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in [{"reason": "bad_row"}] * len(self.conversations) + self.turns:
            counts[item["reason"]] = counts.get(item["reason"], 0) + 1
        return dict(sorted(counts.items()))


def conversation_layout(path: str | Path) -> str | None:
    """MULTI_IF, SYSTEM_AND_TURNS, or None for a single-turn (IFEval-format) file, read off the first row."""
    records = _records(path)
    first = records[0][1] if records else {}
    if "turn_1_prompt" in first:
        return MULTI_IF
    if isinstance(first.get("turns"), list) and "instruction_id_list" not in first:
        return SYSTEM_AND_TURNS
    return None


def _records(path: str | Path) -> list[tuple[int, dict]]:
    if Path(path).suffix.lower() != ".csv":
        return read_jsonl(path)
    text = read_utf8(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records, start = [], 2  # line 1 is the header
    for row in reader:
        records.append((start, row))
        start = reader.line_num + 1
    return records


def _json_cell(record: dict, name: str, path, line: int) -> object:
    value = record.get(name)
    if not isinstance(value, str):
        return value
    if value.strip() in ("", "None"):
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ConstraintError(f"{where(str(path), line, name)}: {malformed_json(err)}") from err


def _multi_if_turn(record: dict, k: int, path, line: int) -> tuple[str, list, list] | None:
    message = _json_cell(record, f"turn_{k}_prompt", path, line)
    if message is None:
        return None
    if not (isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str)):
        raise ConstraintError(
            f"{where(str(path), line, f'turn_{k}_prompt')}: must be a user message {{role: user, content}}"
        )
    ids = _json_cell(record, f"turn_{k}_instruction_id_list", path, line) or []
    kwargs = _json_cell(record, f"turn_{k}_kwargs", path, line) or []
    if not isinstance(ids, list) or not isinstance(kwargs, list):
        raise ConstraintError(f"{where(str(path), line, f'turn_{k}_kwargs')}: ids and kwargs must be JSON lists")
    for index, item in enumerate(kwargs):
        if isinstance(item, str):  # the release writes each turn's kwargs as a list of JSON strings
            kwargs[index] = _json_cell({"item": item}, "item", path, line) or {}
    return message["content"], ids, kwargs


def _turns(layout: str, record: dict, path, line: int) -> tuple[str | None, list[tuple[str, list, list]]]:
    """(system prompt, [(user message, ids, kwargs) per turn]) of one record."""
    if layout == MULTI_IF:
        count = max((int(m.group(1)) for m in map(_TURN_PROMPT.fullmatch, record) if m), default=0)
        turns = [_multi_if_turn(record, k, path, line) for k in range(1, count + 1)]
        return None, [turn for turn in turns if turn is not None]
    system, raw_turns = record.get("system"), record.get("turns")
    if system is not None and not isinstance(system, str):
        raise ConstraintError(f"{where(str(path), line, 'system')}: must be a string, got {system!r:.80}")
    if not isinstance(raw_turns, list) or not all(isinstance(t, dict) for t in raw_turns):
        raise ConstraintError(f"{where(str(path), line, 'turns')}: must be a list of objects")
    system_ids = record.get("system_instruction_id_list") or []
    system_kwargs = record.get("system_kwargs") or []
    turns = []
    for index, turn in enumerate(raw_turns):
        if not isinstance(turn.get("prompt"), str):
            raise ConstraintError(f"{where(str(path), line, f'turns[{index}].prompt')}: must be a string")
        ids, kwargs = turn.get("instruction_id_list") or [], turn.get("kwargs") or []
        if not all(isinstance(x, list) for x in (ids, kwargs, system_ids, system_kwargs)):
            raise ConstraintError(f"{where(str(path), line, f'turns[{index}]')}: instruction ids and kwargs are lists")
        turns.append((turn["prompt"], [*system_ids, *ids], [*system_kwargs, *kwargs]))
    return system, turns


def _judged(record: dict, k: int, prompt: str, ids: list, kwargs: list, language: str, path, line) -> InputRow | None:
    if not ids:
        return None  # nothing stated to judge at this turn (Multi-IF skips such turns too)
    row = {"key": record["key"], "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs, "language": language}
    try:
        return parse_row(Path(path), line, row)
    except ConstraintError as err:  # same type (UnsupportedLanguageError stays one), the turn named
        raise type(err)(f"{err} (turn {k}'s constraints)") from err


def _reason(err: ConstraintError) -> str:
    return "unsupported_language" if isinstance(err, UnsupportedLanguageError) else "bad_row"


def load_conversations(path: str | Path, skipped: SkippedTurns | None = None, limit: int = 0) -> list[Conversation]:
    """The conversations of a Multi-IF or system-and-turns file (the first `limit`, 0 = all), each turn's
    constraints validated. Without `skipped` the first problem raises (unknown ids: all at once)."""
    layout = conversation_layout(path)
    if layout is None:
        raise ConstraintError(f"{path}: not a conversation file (no turn_1_prompt column, no turns list)")
    records = _records(path)[: limit or None]
    parsed, unknown = [], {}
    for line, record in records:
        try:
            if "key" not in record:
                raise ConstraintError(f"{where(str(path), line, 'key')}: missing")
            system, turns = _turns(layout, record, path, line)
            if not turns:
                raise ConstraintError(f"{where(str(path), line, 'turns')}: no turn")
        except ConstraintError:
            if skipped is None:
                raise
            skipped.conversations.append(record.get("key", f"line {line}"))
            continue
        for _, ids, _ in turns:
            for instruction_id in ids if isinstance(ids, list) else ():
                if isinstance(instruction_id, str) and not is_known_id(instruction_id):
                    unknown.setdefault(instruction_id, []).append(line)
        parsed.append((line, record, system, turns))
    if unknown and skipped is None:
        raise unknown_ids_error(Path(path), unknown)
    conversations = []
    for line, record, system, turns in parsed:
        raw_language = record.get("language") or "en"
        language = LANGUAGE_CODES.get(raw_language, raw_language) if isinstance(raw_language, str) else raw_language
        judged_turns = []
        for k, (prompt, ids, kwargs) in enumerate(turns, start=1):
            unknown_here = [i for i in ids if i in unknown]
            if unknown_here:  # only under skip_bad: otherwise they were all reported above
                prefixed = split_language_prefix(unknown_here[0])[0] is not None
                reason = "unsupported_language" if prefixed else "unknown_instruction_id"
                skipped.turns.append({"key": record["key"], "turn": k, "reason": reason})  # type: ignore[union-attr]
                judged_turns.append(Turn(prompt, None))
                continue
            try:
                judged = _judged(record, k, prompt, ids, kwargs, language, path, line)
            except ConstraintError as err:
                if skipped is None:
                    raise
                skipped.turns.append({"key": record["key"], "turn": k, "reason": _reason(err)})
                judged = None
            judged_turns.append(Turn(prompt, judged))
        conversations.append(Conversation(record["key"], str(language), system, tuple(judged_turns), line))
    return conversations
