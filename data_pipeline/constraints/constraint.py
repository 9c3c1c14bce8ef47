"""Machine-checkable constraints (IFEval instruction ids) and their deterministic reversals.

A `Constraint` is an IFEval instruction id with its kwargs, or one of our reversed ids (`rpo:*`, see
`data_pipeline/constraints/reversal.py`). `check` gives IFEval's strict verdict, `reverse` the constraint
whose verdict is the exact opposite on every non-empty response (docs/algorithms.md §5, "Checker version"):

    check(reverse(c), y) == (not check(c, y))   and   reverse(reverse(c)) == c

- Relation-parametrised ids flip IFEval's relation: "at least N" <-> "less than N".
- The other reversible ids map to an `rpo:*` id whose checker is the negation of IFEval's checker.
- `keywords:existence` ("include all of K1..Kn") and `keywords:forbidden_words` ("include none of W1..Wn")
  are reversible only with a single keyword, since the negation of an "all of" is an "any of".
  `constraints_from_ifeval_row` therefore splits them into one constraint per keyword; the conjunction of the
  parts is exactly the original check. `reverse` returns None for a multi-keyword one built by hand.
- An empty (whitespace-only) response fails every constraint, reversed ones included, as in IFEval's own
  evaluation, so the complement property holds for non-empty responses only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from data_pipeline.constraints.ifeval import ifeval_check, ifeval_description
from data_pipeline.constraints.languages import (
    UnsupportedLanguageError,
    refuse_unjudged,
    row_language,
    split_language_prefix,
)
from data_pipeline.constraints.mifeval_rules import is_language_rule, resolve
from data_pipeline.constraints.params import IFEVAL_PARAM_SCHEMAS, ConstraintError, validate_params, where
from data_pipeline.constraints.reversal import CLEARER_WORDING, NEGATED_BASE, NEGATION_OF, render_negation

__all__ = [
    "NON_REVERSIBLE_TYPES",
    "REVERSIBLE_TYPES",
    "Constraint",
    "ConstraintError",
    "check",
    "constraints_from_ifeval_row",
    "is_reversible",
    "render",
    "reverse",
]

# IFEval id -> name of its relation parameter ("at least" / "less than").
RELATION_PARAM = {
    "length_constraints:number_words": "relation",
    "length_constraints:number_sentences": "relation",
    "keywords:frequency": "relation",
    "keywords:letter_frequency": "let_relation",
    "change_case:capital_word_frequency": "capital_relation",
}
_FLIPPED_RELATION = {"at least": "less than", "less than": "at least"}

# Ids whose list parameter must hold exactly one item to be reversible (see module docstring).
SINGLE_ITEM_PARAM = {"keywords:existence": "keywords", "keywords:forbidden_words": "forbidden_words"}

NON_REVERSIBLE_TYPES: dict[str, str] = {
    "language:response_language": "the complement is 'any other language', a disjunction over ~100 "
    "languages, and langdetect's verdict is not a rule a reader can follow",
    "length_constraints:nth_paragraph_first_word": "the check is a conjunction (paragraph count AND first "
    "word); its complement is a disjunction of two conditions",
    "combination:two_responses": "the complement ('not exactly two different responses separated by "
    "******') is a disjunction with no single instruction to follow",
}

REVERSIBLE_TYPES: frozenset[str] = frozenset(set(RELATION_PARAM) | set(NEGATION_OF) | set(NEGATED_BASE))

ALL_TYPES: frozenset[str] = frozenset(set(IFEVAL_PARAM_SCHEMAS) | set(NEGATED_BASE))

assert REVERSIBLE_TYPES | set(NON_REVERSIBLE_TYPES) == ALL_TYPES
assert not REVERSIBLE_TYPES & set(NON_REVERSIBLE_TYPES)


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _schema_of(type_: str):
    base = NEGATED_BASE.get(type_, type_)
    if base not in IFEVAL_PARAM_SCHEMAS:
        return None
    return IFEVAL_PARAM_SCHEMAS[base]


@dataclass(frozen=True)
class Constraint:
    """One checkable constraint. `params` are the kwargs sorted by name, lists stored as tuples."""

    type: str
    params: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        canonical = tuple(sorted((name, _hashable(value)) for name, value in self.params))
        object.__setattr__(self, "params", canonical)
        validate_constraint(self.type, dict(canonical))

    @classmethod
    def make(cls, type_: str, **kwargs: object) -> Constraint:
        return cls(type_, tuple(kwargs.items()))

    @property
    def kwargs(self) -> dict[str, object]:
        return dict(self.params)


def validate_constraint(
    type_: str,
    kwargs: Mapping[str, object],
    *,
    source: str | None = None,
    line: int | None = None,
    type_field: str = "type",
    field_prefix: str = "kwargs",
) -> None:
    schema = _schema_of(type_)
    if schema is None:
        raise ConstraintError(
            f"{where(source, line, type_field)}: unknown constraint type {type_!r} "
            f"(known: IFEval's 25 instruction ids and rpo:* reversals)"
        )
    validate_params(schema, kwargs, type_=type_, source=source, line=line, field_prefix=field_prefix)


def check(c: Constraint, response: str, prompt: str | None = None) -> bool:
    """IFEval's strict verdict of `response` on `c` (negated for `rpo:*` ids); empty responses fail."""
    if not response.strip():
        return False
    if c.type in NEGATED_BASE:
        return not ifeval_check(NEGATED_BASE[c.type], c.kwargs, response, prompt)
    return ifeval_check(c.type, c.kwargs, response, prompt)


def reverse(c: Constraint) -> Constraint | None:
    """The exact complement of `c` on non-empty responses, or None when there is no clean one."""
    if c.type in RELATION_PARAM:
        name = RELATION_PARAM[c.type]
        return Constraint.make(c.type, **{**c.kwargs, name: _FLIPPED_RELATION[c.kwargs[name]]})
    if c.type in SINGLE_ITEM_PARAM and len(c.kwargs[SINGLE_ITEM_PARAM[c.type]]) != 1:
        return None
    if c.type in NEGATION_OF:
        return Constraint(NEGATION_OF[c.type], c.params)
    if c.type in NEGATED_BASE:
        return Constraint(NEGATED_BASE[c.type], c.params)
    return None


def render(c: Constraint) -> str:
    """Instruction text for a prompt: IFEval's own wording for its ids (clearer for the few in
    `CLEARER_WORDING`), ours for `rpo:*` ids."""
    if c.type in NEGATED_BASE:
        return render_negation(c.type, c.kwargs)
    if c.type in CLEARER_WORDING:
        return CLEARER_WORDING[c.type](c.kwargs)
    return ifeval_description(c.type, c.kwargs)


def is_reversible(type: str) -> bool:  # noqa: A002 - the published API names it `type`
    if type not in ALL_TYPES:
        raise ConstraintError(f"unknown constraint type {type!r}")
    return type in REVERSIBLE_TYPES


class RowEntry(NamedTuple):
    """One instruction of a row: the id that judges it, its kwargs, and whether the row named it with a language
    prefix (then the id is M-IFEval's rule for that language, `mifeval_rules.resolve`, and the row-language scope
    of IFEval's checkers, `languages.refuse_unjudged`, does not apply: the benchmark chose the rule)."""

    instruction_id: str
    kwargs: dict
    prefixed: bool


def ifeval_row_entries(row: dict, source: str, line: int) -> tuple[str, list[RowEntry]]:
    """(the row's language, its entries), shape-checked; None kwargs dropped.

    kwargs entries whose value is None are absent (HF's IFEval copy lists every parameter name with None). A
    language prefix on an id (`es:keywords:existence`) gives the row's language, as a `language` field does
    (`languages.row_language`), and picks that language's rule (`mifeval_rules.resolve`: an IFEval id with its
    relation words translated, or a rule written for the language; an id without one raises
    UnsupportedLanguageError). The IFEval and IFBench ids (given or resolved) and their parameters are validated by
    the caller; a rule written for a language was validated by `resolve`.
    """
    ids = row.get("instruction_id_list")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ConstraintError(f"{where(source, line, 'instruction_id_list')}: must be a list of strings, got {ids!r}")
    kwargs_list = row.get("kwargs")
    if not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        raise ConstraintError(
            f"{where(source, line, 'kwargs')}: must be a list with one dict per "
            f"instruction id ({len(ids)}), got {kwargs_list!r}"
        )
    language, bases = row_language(row, ids, source, line)
    entries = []
    for index, (raw_id, base, raw_kwargs) in enumerate(zip(ids, bases, kwargs_list, strict=True)):
        if not isinstance(raw_kwargs, dict):
            raise ConstraintError(f"{where(source, line, f'kwargs[{index}]')}: must be a dict, got {raw_kwargs!r}")
        kwargs = {name: value for name, value in raw_kwargs.items() if value is not None}
        prefix, _ = split_language_prefix(raw_id)
        if prefix is None:
            entries.append(RowEntry(base, kwargs, False))
        else:
            entries.append(RowEntry(*resolve(prefix.lower(), base, kwargs, source, line, index), True))
    return language, entries


def constraints_from_ifeval_row(row: dict, source: str, line: int) -> list[Constraint]:
    """The constraints of one IFEval/IFBench-format row (`instruction_id_list`, `kwargs`).

    kwargs entries whose value is None are absent (HF's IFEval copy lists every parameter name with None).
    Multi-keyword `keywords:existence` / `keywords:forbidden_words` are split into one constraint per keyword
    (duplicates dropped), which keeps the row's overall verdict and makes each part reversible. A constraint
    whose checker does not judge the row's language raises `UnsupportedLanguageError`.
    """
    constraints: list[Constraint] = []
    language, entries = ifeval_row_entries(row, source, line)
    for index, (type_, kwargs, prefixed) in enumerate(entries):
        if is_language_rule(type_):
            raise UnsupportedLanguageError(
                f"{where(source, line, f'instruction_id_list[{index}]')}: {type_} is judged by a rule written for "
                f"{language!r}, which has no reversal here, so no pair is labelled with it (nor with the English "
                "rule); skip such rows with --skip-bad"
            )
        validate_constraint(
            type_,
            kwargs,
            source=source,
            line=line,
            type_field=f"instruction_id_list[{index}]",
            field_prefix=f"kwargs[{index}]",
        )
        if not prefixed:
            refuse_unjudged(type_, language, source, line, f"instruction_id_list[{index}]")
        if type_ in SINGLE_ITEM_PARAM:
            name = SINGLE_ITEM_PARAM[type_]
            for keyword in dict.fromkeys(kwargs[name]):
                constraints.append(Constraint.make(type_, **{name: (keyword,)}))
        else:
            constraints.append(Constraint.make(type_, **kwargs))
    return constraints
