"""Parameter schemas of the IFEval instruction ids, and their validation.

IFEval's `build_description` silently replaces a missing or out-of-range argument by a random one (e.g. a
negative word count, a two-letter `letter`). We reject those instead, so that a constraint always means what
its file says and checking it is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from data_pipeline.constraints.ifeval import language_codes
from data_pipeline.errors import UserError

RELATIONS = ("less than", "at least")


class ConstraintError(UserError, ValueError):
    """Bad constraint data; the message names the file, line and field when they are known."""


def where(source: str | None, line: int | None, field: str) -> str:
    location = f"{source}:{line}" if source is not None else "<constraint>"
    return f"{location}: field {field!r}"


def _non_negative_int(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    return None if value >= 0 else f"must be >= 0, got {value}"


def _positive_int(value: object) -> str | None:
    problem = _non_negative_int(value)
    if problem is None and value == 0:
        return "must be >= 1, got 0"
    return problem


def _relation(value: object) -> str | None:
    return None if value in RELATIONS else f"must be one of {RELATIONS}, got {value!r}"


def _text(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {value!r}"
    return None


def _regex(value: object) -> str | None:
    # IFEval searches keywords as regular expressions.
    problem = _text(value)
    if problem is None:
        try:
            re.compile(value)
        except re.error as err:
            return f"is not a valid regular expression ({err}): {value!r}"
    return problem


def _regex_list(value: object) -> str | None:
    if not isinstance(value, list | tuple) or not value:
        return f"must be a non-empty list of strings, got {value!r}"
    for item in value:
        problem = _regex(item)
        if problem is not None:
            return f"item {problem}"
    return None


def _letter(value: object) -> str | None:
    # Not only ASCII letters: IFEval's own data asks for '#' and '!' (see constraints/ifeval.py).
    if not isinstance(value, str) or len(value) != 1 or value.isspace():
        return f"must be a single non-space character, got {value!r}"
    return None


def _language(value: object) -> str | None:
    if value not in language_codes():
        return f"must be an ISO 639-1 code known to IFEval (e.g. 'en', 'de'), got {value!r}"
    return None


Validator = Callable[[object], "str | None"]

# IFEval instruction id -> {param name: validator}; every param is required.
IFEVAL_PARAM_SCHEMAS: dict[str, dict[str, Validator]] = {
    "keywords:existence": {"keywords": _regex_list},
    "keywords:frequency": {"keyword": _regex, "frequency": _non_negative_int, "relation": _relation},
    "keywords:forbidden_words": {"forbidden_words": _regex_list},
    "keywords:letter_frequency": {"letter": _letter, "let_frequency": _non_negative_int, "let_relation": _relation},
    "language:response_language": {"language": _language},
    "length_constraints:number_sentences": {"num_sentences": _non_negative_int, "relation": _relation},
    "length_constraints:number_paragraphs": {"num_paragraphs": _non_negative_int},
    "length_constraints:number_words": {"num_words": _non_negative_int, "relation": _relation},
    "length_constraints:nth_paragraph_first_word": {
        "num_paragraphs": _positive_int,
        "nth_paragraph": _positive_int,
        "first_word": _text,
    },
    "detectable_content:number_placeholders": {"num_placeholders": _non_negative_int},
    "detectable_content:postscript": {"postscript_marker": _text},
    "detectable_format:number_bullet_lists": {"num_bullets": _non_negative_int},
    "detectable_format:constrained_response": {},
    "detectable_format:number_highlighted_sections": {"num_highlights": _non_negative_int},
    "detectable_format:multiple_sections": {"section_spliter": _text, "num_sections": _non_negative_int},
    "detectable_format:json_format": {},
    "detectable_format:title": {},
    "combination:two_responses": {},
    "combination:repeat_prompt": {"prompt_to_repeat": _text},
    "startend:end_checker": {"end_phrase": _text},
    "change_case:capital_word_frequency": {"capital_frequency": _non_negative_int, "capital_relation": _relation},
    "change_case:english_capital": {},
    "change_case:english_lowercase": {},
    "punctuation:no_comma": {},
    "startend:quotation": {},
}


def validate_params(
    schema: Mapping[str, Validator],
    kwargs: Mapping[str, object],
    *,
    type_: str,
    source: str | None = None,
    line: int | None = None,
    field_prefix: str = "kwargs",
) -> None:
    """Raise ConstraintError naming file, line and field for a missing, unknown or bad parameter."""
    for name in kwargs:
        if name not in schema:
            raise ConstraintError(
                f"{where(source, line, f'{field_prefix}.{name}')}: unknown parameter "
                f"for {type_} (expected {sorted(schema)})"
            )
    for name, validate in schema.items():
        if name not in kwargs:
            raise ConstraintError(f"{where(source, line, f'{field_prefix}.{name}')}: missing, required by {type_}")
        problem = validate(kwargs[name])
        if problem is not None:
            raise ConstraintError(f"{where(source, line, f'{field_prefix}.{name}')}: {problem}")
    if type_ == "length_constraints:nth_paragraph_first_word" and (kwargs["nth_paragraph"] > kwargs["num_paragraphs"]):
        raise ConstraintError(
            f"{where(source, line, f'{field_prefix}.nth_paragraph')}: must be <= "
            f"num_paragraphs ({kwargs['num_paragraphs']}), got {kwargs['nth_paragraph']}"
        )
