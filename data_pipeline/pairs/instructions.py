"""The inputs of the pool recipes and their JSON form.

- `Instruction`: a constraint-annotated prompt (optional system prompt, history + final user turn, constraints).
- `ResponseRecord`: one sampled response to an instruction, with its per-constraint verdicts once judged.

Every `from_json` raises `DataError` naming the file, line and field of the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_pipeline import constraints as cons
from data_pipeline.constraints import languages as cons_languages
from data_pipeline.pairs.schema import DataError, Message, require_field, validate_prompt_messages

# Constraint type for requirements that no checker can verify; judged and reversed by the LLM judge.
FREE_FORM = "free_form"


def _reason(err: cons.ConstraintError) -> str:
    """The `--skip-bad` stats key of a constraint error."""
    if isinstance(err, cons.UnsupportedLanguageError):
        return "unsupported_language"
    return "unknown_constraint_type" if "unknown constraint type" in str(err) else "bad_params"


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
        constraint_id = require_field(obj, "id", str, source, line, prefix)
        type_ = require_field(obj, "type", str, source, line, prefix)
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise DataError(source, line, f"{prefix}params", f"must be an object, got {params!r:.80}")
        if type_ == FREE_FORM:
            text = require_field(obj, "text", str, source, line, prefix)
            if params or not text.strip():
                raise DataError(
                    source, line, f"{prefix}text", "a free_form constraint needs a non-empty text and no params"
                )
            return cls(constraint_id, type_, (), text)
        try:
            c = cons.Constraint(type_, tuple(params.items()))
        except cons.ConstraintError as err:
            raise DataError(source, line, f"{prefix}type/params", str(err), reason=_reason(err)) from err
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
        return {
            "id": self.id,
            "system": self.system,
            "task": self.task,
            "turns": [t.to_json() for t in self.turns],
            "constraints": [c.to_json() for c in self.constraints],
        }

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int) -> Instruction:
        instruction_id = require_field(obj, "id", (str, int), source, line)
        raw_turns = require_field(obj, "turns", list, source, line)
        turns = tuple(Message.from_json(t, source, line, f"turns[{i}].") for i, t in enumerate(raw_turns))
        if any(t.role == "system" for t in turns):
            raise DataError(source, line, "turns", "put the system prompt in 'system', not in 'turns'")
        validate_prompt_messages(turns, source, line, "turns")
        raw_constraints = require_field(obj, "constraints", list, source, line)
        specs = tuple(
            ConstraintSpec.from_json(c, source, line, f"constraints[{i}].") for i, c in enumerate(raw_constraints)
        )
        if not specs:
            raise DataError(source, line, "constraints", "must hold at least one constraint")
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise DataError(source, line, "constraints", f"constraint ids must be unique, got {ids}")
        system, task = obj.get("system"), obj.get("task")
        for name, value in (("system", system), ("task", task)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(source, line, name, f"must be a non-empty string or null, got {value!r:.80}")
        _refuse_unjudged_language(obj, specs, source, line)
        return cls(str(instruction_id), turns, specs, system, task, source, line)

    @classmethod
    def from_ifeval_row(cls, obj: Any, source: str, line: int) -> Instruction:
        """An IFEval/IFBench row (`key`, `prompt`, `instruction_id_list`, `kwargs`); constraints are checkable."""
        key = require_field(obj, "key", (str, int), source, line)
        prompt = require_field(obj, "prompt", str, source, line)
        if not prompt.strip():
            raise DataError(source, line, "prompt", "is empty")
        try:
            parsed = cons.constraints_from_ifeval_row(obj, source, line)
        except cons.ConstraintError as err:
            raise DataError(source, line, "instruction_id_list/kwargs", str(err), reason=_reason(err)) from err
        if not parsed:
            raise DataError(source, line, "instruction_id_list", "is empty")
        specs = tuple(ConstraintSpec.from_constraint(f"c{i}", c) for i, c in enumerate(parsed))
        return cls(str(key), (Message("user", prompt),), specs, None, None, source, line)


def _refuse_unjudged_language(obj: dict, specs: tuple[ConstraintSpec, ...], source: str, line: int) -> None:
    """An instruction's optional `language` must be one that each of its checkable constraints judges
    (free-form constraints are judged by the LLM, in any language)."""
    language = obj.get("language", cons_languages.DEFAULT_LANGUAGE)
    if not isinstance(language, str) or not language.strip():
        raise DataError(source, line, "language", f"must be a language code like 'en', got {language!r:.80}")
    for index, spec in enumerate(specs):
        if spec.checkable and not cons_languages.judges(spec.type, language):
            languages = ", ".join(sorted(cons_languages.checker_languages(spec.type)))
            message = (
                f"{spec.type} is checked by rules for {languages} only, and this instruction is in {language!r}; "
                "it is not judged by another language's rules (skip such rows with --skip-bad)"
            )
            raise DataError(source, line, f"constraints[{index}].type", message, reason="unsupported_language")


@dataclass(frozen=True)
class ResponseRecord:
    """One response to `instruction_id`; `verdicts` maps constraint id -> satisfied, once judged."""

    instruction_id: str
    response_id: str
    text: str
    source: dict = field(default_factory=dict)
    verdicts: tuple[tuple[str, bool], ...] = ()

    def to_json(self) -> dict:
        return {
            "instruction_id": self.instruction_id,
            "response_id": self.response_id,
            "text": self.text,
            "source": self.source,
            "verdicts": dict(self.verdicts),
        }
