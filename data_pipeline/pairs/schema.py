"""The pair schema: messages, sequences and `PairRecord`, with their JSON form.

- `PairRecord`: one line of `pairs.jsonl`, the only format the tokenizer reads (see data_pipeline/README.md):
  G=2 sequences (chosen, rejected) for dpo/rpo, G=4 for iopo in the order (x1,y1) (x1,y2) (x2,y2) (x2,y1).

Instructions and responses, the inputs of the pool recipes, are in `data_pipeline.pairs.instructions`.
Every `from_json` raises `DataError` naming the file, line and field of the first problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from data_pipeline.errors import UserError

ROLES = ("system", "user", "assistant")
RECIPES = ("rpo", "iopo", "dpo")
GROUP_SIZE = {"rpo": 2, "dpo": 2, "iopo": 4}


class DataError(UserError, ValueError):
    """Bad input data. `reason` is the stats key used when `--skip-bad` counts instead of raising."""

    def __init__(self, source: str, line: int | None, field_name: str, message: str, reason: str = "bad_field"):
        self.source, self.line, self.field, self.reason = source, line, field_name, reason
        super().__init__(f"{source}:{line if line is not None else '?'}: field {field_name!r}: {message}")


def require_field(obj: dict, key: str, kind: type | tuple[type, ...], source: str, line: int, prefix: str = "") -> Any:
    name = f"{prefix}{key}"
    if not isinstance(obj, dict):
        raise DataError(source, line, prefix.rstrip(".") or "<row>", f"must be an object, got {obj!r:.80}")
    if key not in obj:
        raise DataError(source, line, name, "missing", reason="missing_field")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(source, line, name, f"must be {getattr(kind, '__name__', kind)}, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_json(self) -> dict:
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int, prefix: str) -> Message:
        role = require_field(obj, "role", str, source, line, prefix)
        content = require_field(obj, "content", str, source, line, prefix)
        if role not in ROLES:
            raise DataError(source, line, f"{prefix}role", f"must be one of {ROLES}, got {role!r}")
        return cls(role, content)


def validate_prompt_messages(messages: tuple[Message, ...], source: str, line: int, prefix: str) -> None:
    """A prompt is [system?] then user/assistant turns that alternate and end with the user turn to answer."""
    if not messages:
        raise DataError(source, line, prefix, "must hold at least one user message")
    body = messages[1:] if messages[0].role == "system" else messages
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            where = index + (len(messages) - len(body))
            raise DataError(
                source,
                line,
                f"{prefix}[{where}].role",
                f"expected {expected!r} (turns alternate and end with a user turn), got {message.role!r}",
            )
    if not body or body[-1].role != "user":
        raise DataError(source, line, prefix, "must end with a user message")


@dataclass(frozen=True)
class Sequence:
    """One scored sequence: the prompt conversation and the final assistant turn (the only scored part)."""

    messages: tuple[Message, ...]
    response: str

    def to_json(self) -> dict:
        return {"messages": [m.to_json() for m in self.messages], "response": self.response}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int, prefix: str) -> Sequence:
        raw = require_field(obj, "messages", list, source, line, prefix)
        messages = tuple(Message.from_json(m, source, line, f"{prefix}messages[{i}].") for i, m in enumerate(raw))
        validate_prompt_messages(messages, source, line, f"{prefix}messages")
        response = require_field(obj, "response", str, source, line, prefix)
        if not response.strip():
            raise DataError(source, line, f"{prefix}response", "is empty", reason="empty_response")
        return cls(messages, response)


def pair_id(recipe: str, sequences: tuple[Sequence, ...]) -> str:
    canonical = json.dumps([recipe, [s.to_json() for s in sequences]], sort_keys=True, ensure_ascii=False)
    return f"{recipe}-{hashlib.sha256(canonical.encode()).hexdigest()[:20]}"


@dataclass(frozen=True)
class PairRecord:
    """One training example. `margin` is RPO's g (differing constraints); 0 when the recipe has none."""

    id: str
    recipe: str
    sequences: tuple[Sequence, ...]
    margin: int
    group_id: str
    provenance: dict

    @classmethod
    def make(
        cls, recipe: str, sequences: tuple[Sequence, ...], margin: int, group_id: str, provenance: dict
    ) -> PairRecord:
        record = cls(pair_id(recipe, sequences), recipe, sequences, margin, group_id, provenance)
        record.validate("<built>", 0)
        return record

    def validate(self, source: str, line: int) -> None:
        if self.recipe not in RECIPES:
            raise DataError(source, line, "recipe", f"must be one of {RECIPES}, got {self.recipe!r}")
        if len(self.sequences) != GROUP_SIZE[self.recipe]:
            raise DataError(
                source,
                line,
                "sequences",
                f"{self.recipe} needs {GROUP_SIZE[self.recipe]} sequences, got {len(self.sequences)}",
            )
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise DataError(source, line, "margin", f"must be an integer >= 0, got {self.margin!r}")
        # Chosen and rejected of a DPO pair answer the same prompt; IOPO's (x1,y1),(x1,y2) and (x2,y2),(x2,y1) too.
        for a, b in ((0, 1), (2, 3))[: len(self.sequences) // 2]:
            if self.sequences[a].messages != self.sequences[b].messages:
                raise DataError(source, line, f"sequences[{b}].messages", f"must equal sequences[{a}].messages")
        if self.recipe == "iopo" and (
            self.sequences[0].response != self.sequences[3].response
            or self.sequences[1].response != self.sequences[2].response
        ):
            raise DataError(source, line, "sequences", "iopo order is (x1,y1) (x1,y2) (x2,y2) (x2,y1)")

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "recipe": self.recipe,
            "sequences": [s.to_json() for s in self.sequences],
            "margin": self.margin,
            "group_id": self.group_id,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int) -> PairRecord:
        if isinstance(obj, dict) and "sequences" not in obj and {"chosen", "rejected"} <= set(obj):
            raise DataError(
                source,
                line,
                "<row>",
                "is a preference row in TRL's {prompt, chosen, rejected} format, not an rpo-jax pair record; "
                f"convert the file with `rpo-jax build-pairs --recipe dpo --input {source} --output DIR` and use "
                "DIR/pairs.jsonl",
                reason="trl_format",
            )
        pid = require_field(obj, "id", str, source, line)
        recipe = require_field(obj, "recipe", str, source, line)
        raw = require_field(obj, "sequences", list, source, line)
        sequences = tuple(Sequence.from_json(s, source, line, f"sequences[{i}].") for i, s in enumerate(raw))
        margin = require_field(obj, "margin", int, source, line)
        group_id = require_field(obj, "group_id", str, source, line)
        provenance = require_field(obj, "provenance", dict, source, line)
        record = cls(pid, recipe, sequences, margin, group_id, provenance)
        record.validate(source, line)
        return record
