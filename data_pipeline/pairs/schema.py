"""Typed records of the pair pipeline and their JSON form.

- `Instruction`: a constraint-annotated prompt (optional system prompt, history + final user turn, constraints).
- `ResponseRecord`: one sampled response to an instruction, with its per-constraint verdicts once judged.
- `PairRecord`: one line of `pairs.jsonl`, the only format the tokenizer reads (see data_pipeline/README.md):
  G=2 sequences (chosen, rejected) for dpo/rpo, G=4 for iopo in the order (x1,y1) (x1,y2) (x2,y2) (x2,y1).

Every `from_json` raises `DataError` naming the file, line and field of the first problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from data_pipeline import constraints as cons
from data_pipeline.errors import UserError

ROLES = ("system", "user", "assistant")
RECIPES = ("rpo", "iopo", "dpo")
GROUP_SIZE = {"rpo": 2, "dpo": 2, "iopo": 4}
# Constraint type for requirements that no checker can verify; judged and reversed by the LLM judge.
FREE_FORM = "free_form"


class DataError(UserError, ValueError):
    """Bad input data. `reason` is the stats key used when `--skip-bad` counts instead of raising."""

    def __init__(self, source: str, line: int | None, field_name: str, message: str, reason: str = "bad_field"):
        self.source, self.line, self.field, self.reason = source, line, field_name, reason
        super().__init__(f"{source}:{line if line is not None else '?'}: field {field_name!r}: {message}")


def _require(obj: dict, key: str, kind: type | tuple[type, ...], source: str, line: int, prefix: str = "") -> Any:
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
        role = _require(obj, "role", str, source, line, prefix)
        content = _require(obj, "content", str, source, line, prefix)
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
            raise DataError(source, line, f"{prefix}[{where}].role",
                            f"expected {expected!r} (turns alternate and end with a user turn), got {message.role!r}")
    if not body or body[-1].role != "user":
        raise DataError(source, line, prefix, "must end with a user message")


@dataclass(frozen=True)
class ConstraintSpec:
    """A constraint of an instruction: a checkable `constraints.Constraint` or a free-form text (`FREE_FORM`)."""

    id: str
    type: str
    params: tuple[tuple[str, object], ...]
    text: str

    @property
    def checkable(self) -> bool:
        return self.type != FREE_FORM

    def to_constraint(self) -> cons.Constraint:
        return cons.Constraint(self.type, self.params)

    @classmethod
    def from_constraint(cls, constraint_id: str, c: cons.Constraint) -> ConstraintSpec:
        return cls(constraint_id, c.type, c.params, cons.render(c))

    def to_json(self) -> dict:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}
        return {"id": self.id, "type": self.type, "params": params, "text": self.text}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int, prefix: str) -> ConstraintSpec:
        constraint_id = _require(obj, "id", str, source, line, prefix)
        type_ = _require(obj, "type", str, source, line, prefix)
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise DataError(source, line, f"{prefix}params", f"must be an object, got {params!r:.80}")
        if type_ == FREE_FORM:
            text = _require(obj, "text", str, source, line, prefix)
            if params or not text.strip():
                raise DataError(source, line, f"{prefix}text", "a free_form constraint needs a non-empty text "
                                "and no params")
            return cls(constraint_id, type_, (), text)
        try:
            c = cons.Constraint(type_, tuple(params.items()))
        except cons.ConstraintError as err:
            reason = "unknown_constraint_type" if "unknown constraint type" in str(err) else "bad_params"
            raise DataError(source, line, f"{prefix}type/params", str(err), reason=reason) from err
        text = obj.get("text") or cons.render(c)
        return cls(constraint_id, c.type, c.params, text)


@dataclass(frozen=True)
class Instruction:
    """A prompt with its constraints. `turns` = history + final user message (the one the constraints apply to).

    `task` is the final request without its constraint sentences, when the source keeps them apart; it lets the
    RPO rewrite state the (partly reversed) requirements without the original ones (see README, "Reversal").
    """

    id: str
    turns: tuple[Message, ...]
    constraints: tuple[ConstraintSpec, ...]
    system: str | None = None
    task: str | None = None
    source: str = ""
    line: int = 0

    @property
    def final_user_message(self) -> str:
        return self.turns[-1].content

    def prompt_messages(self, final_user_message: str | None = None) -> tuple[Message, ...]:
        head = (Message("system", self.system),) if self.system else ()
        last = self.turns[-1] if final_user_message is None else Message("user", final_user_message)
        return head + self.turns[:-1] + (last,)

    def to_json(self) -> dict:
        return {"id": self.id, "system": self.system, "task": self.task,
                "turns": [t.to_json() for t in self.turns],
                "constraints": [c.to_json() for c in self.constraints]}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int) -> Instruction:
        instruction_id = _require(obj, "id", (str, int), source, line)
        raw_turns = _require(obj, "turns", list, source, line)
        turns = tuple(Message.from_json(t, source, line, f"turns[{i}].") for i, t in enumerate(raw_turns))
        if any(t.role == "system" for t in turns):
            raise DataError(source, line, "turns", "put the system prompt in 'system', not in 'turns'")
        validate_prompt_messages(turns, source, line, "turns")
        raw_constraints = _require(obj, "constraints", list, source, line)
        specs = tuple(ConstraintSpec.from_json(c, source, line, f"constraints[{i}].")
                      for i, c in enumerate(raw_constraints))
        if not specs:
            raise DataError(source, line, "constraints", "must hold at least one constraint")
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise DataError(source, line, "constraints", f"constraint ids must be unique, got {ids}")
        system, task = obj.get("system"), obj.get("task")
        for name, value in (("system", system), ("task", task)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(source, line, name, f"must be a non-empty string or null, got {value!r:.80}")
        return cls(str(instruction_id), turns, specs, system, task, source, line)

    @classmethod
    def from_ifeval_row(cls, obj: Any, source: str, line: int) -> Instruction:
        """An IFEval/IFBench row (`key`, `prompt`, `instruction_id_list`, `kwargs`); constraints are checkable."""
        key = _require(obj, "key", (str, int), source, line)
        prompt = _require(obj, "prompt", str, source, line)
        if not prompt.strip():
            raise DataError(source, line, "prompt", "is empty")
        try:
            parsed = cons.constraints_from_ifeval_row(obj, source, line)
        except cons.ConstraintError as err:
            reason = "unknown_constraint_type" if "unknown constraint type" in str(err) else "bad_params"
            raise DataError(source, line, "instruction_id_list/kwargs", str(err), reason=reason) from err
        if not parsed:
            raise DataError(source, line, "instruction_id_list", "is empty")
        specs = tuple(ConstraintSpec.from_constraint(f"c{i}", c) for i, c in enumerate(parsed))
        return cls(str(key), (Message("user", prompt),), specs, None, None, source, line)


@dataclass(frozen=True)
class ResponseRecord:
    """One response to `instruction_id`; `verdicts` maps constraint id -> satisfied, once judged."""

    instruction_id: str
    response_id: str
    text: str
    source: dict = field(default_factory=dict)
    verdicts: tuple[tuple[str, bool], ...] = ()

    def to_json(self) -> dict:
        return {"instruction_id": self.instruction_id, "response_id": self.response_id, "text": self.text,
                "source": self.source, "verdicts": dict(self.verdicts)}


@dataclass(frozen=True)
class Sequence:
    """One scored sequence: the prompt conversation and the final assistant turn (the only scored part)."""

    messages: tuple[Message, ...]
    response: str

    def to_json(self) -> dict:
        return {"messages": [m.to_json() for m in self.messages], "response": self.response}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int, prefix: str) -> Sequence:
        raw = _require(obj, "messages", list, source, line, prefix)
        messages = tuple(Message.from_json(m, source, line, f"{prefix}messages[{i}].") for i, m in enumerate(raw))
        validate_prompt_messages(messages, source, line, f"{prefix}messages")
        response = _require(obj, "response", str, source, line, prefix)
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
    def make(cls, recipe: str, sequences: tuple[Sequence, ...], margin: int, group_id: str,
             provenance: dict) -> PairRecord:
        record = cls(pair_id(recipe, sequences), recipe, sequences, margin, group_id, provenance)
        record.validate("<built>", 0)
        return record

    def validate(self, source: str, line: int) -> None:
        if self.recipe not in RECIPES:
            raise DataError(source, line, "recipe", f"must be one of {RECIPES}, got {self.recipe!r}")
        if len(self.sequences) != GROUP_SIZE[self.recipe]:
            raise DataError(source, line, "sequences", f"{self.recipe} needs {GROUP_SIZE[self.recipe]} sequences, "
                            f"got {len(self.sequences)}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise DataError(source, line, "margin", f"must be an integer >= 0, got {self.margin!r}")
        # Chosen and rejected of a DPO pair answer the same prompt; IOPO's (x1,y1),(x1,y2) and (x2,y2),(x2,y1) too.
        for a, b in ((0, 1), (2, 3))[: len(self.sequences) // 2]:
            if self.sequences[a].messages != self.sequences[b].messages:
                raise DataError(source, line, f"sequences[{b}].messages", f"must equal sequences[{a}].messages")
        if self.recipe == "iopo" and (self.sequences[0].response != self.sequences[3].response
                                      or self.sequences[1].response != self.sequences[2].response):
            raise DataError(source, line, "sequences", "iopo order is (x1,y1) (x1,y2) (x2,y2) (x2,y1)")

    def to_json(self) -> dict:
        return {"id": self.id, "recipe": self.recipe, "sequences": [s.to_json() for s in self.sequences],
                "margin": self.margin, "group_id": self.group_id, "provenance": self.provenance}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int) -> PairRecord:
        pid = _require(obj, "id", str, source, line)
        recipe = _require(obj, "recipe", str, source, line)
        raw = _require(obj, "sequences", list, source, line)
        sequences = tuple(Sequence.from_json(s, source, line, f"sequences[{i}].") for i, s in enumerate(raw))
        margin = _require(obj, "margin", int, source, line)
        group_id = _require(obj, "group_id", str, source, line)
        provenance = _require(obj, "provenance", dict, source, line)
        record = cls(pid, recipe, sequences, margin, group_id, provenance)
        record.validate(source, line)
        return record


def read_pairs(path: str) -> list[PairRecord]:
    """Read and validate a `pairs.jsonl` file."""
    from data_pipeline.pairs.readers import iter_json_rows

    return [PairRecord.from_json(obj, path, line) for line, obj in iter_json_rows(path)]
