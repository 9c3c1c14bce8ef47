"""A constraint of an instruction as the pair recipes see it (`ConstraintSpec`), and where it is stated.

A spec is a checkable `constraints.Constraint` (IFEval / IFBench id or `rpo:*`, with its parameters) or a free-form
text (`FREE_FORM`, judged and reversed by the LLM judge). `stated_in` names the message that states it: the system
prompt (`SYSTEM`), user turn k (from 1), or, when absent, the final user turn; RPO's reversal rewrites that message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_pipeline import constraints as cons
from data_pipeline.pairs.schema import DataError, require_field

# Constraint type for requirements that no checker can verify; judged and reversed by the LLM judge.
FREE_FORM = "free_form"
# `stated_in` of a constraint stated in the system prompt; a user turn is its number, 1 for the first.
SYSTEM = "system"
Location = str | int


def constraint_error_reason(err: cons.ConstraintError) -> str:
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
    stated_in: Location | None = None  # SYSTEM, user turn k (from 1), or None: the final user turn

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
        stated = {} if self.stated_in is None else {"stated_in": self.stated_in}
        return {"id": self.id, "type": self.type, "params": params, "text": self.text, **stated}

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int, prefix: str) -> ConstraintSpec:
        constraint_id = require_field(obj, "id", str, source, line, prefix)
        type_ = require_field(obj, "type", str, source, line, prefix)
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise DataError(source, line, f"{prefix}params", f"must be an object, got {params!r:.80}")
        stated_in = obj.get("stated_in")
        if stated_in is not None and stated_in != SYSTEM and (type(stated_in) is not int or stated_in < 1):
            message = f"must be {SYSTEM!r} or a user turn number from 1, got {stated_in!r:.80}"
            raise DataError(source, line, f"{prefix}stated_in", message)
        if type_ == FREE_FORM:
            text = require_field(obj, "text", str, source, line, prefix)
            if params or not text.strip():
                raise DataError(
                    source, line, f"{prefix}text", "a free_form constraint needs a non-empty text and no params"
                )
            return cls(constraint_id, type_, (), text, stated_in)
        try:
            c = cons.Constraint(type_, tuple(params.items()))
        except cons.ConstraintError as err:
            raise DataError(
                source, line, f"{prefix}type/params", str(err), reason=constraint_error_reason(err)
            ) from err
        text = obj.get("text") or cons.render(c)
        return cls(constraint_id, c.type, c.params, text, stated_in)
