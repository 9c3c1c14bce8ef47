"""Access to the vendored IFEval checkers (`data_pipeline/ifeval_lib`), set up for offline, repeatable use.

The checkers need NLTK's punkt_tab English model; it ships with the repo under
`data_pipeline/assets/nltk_data` and is put first on `nltk.data.path` before the checker modules are imported,
so nothing is ever downloaded. `langdetect` (used by the language and case checkers) is randomised unless
seeded; we seed it so a response always gets the same verdict.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from data_pipeline.files import ASSETS_DIR

NLTK_DATA_DIR = ASSETS_DIR / "nltk_data"
# Seed used for langdetect's sampling; any fixed value makes verdicts repeatable.
LANGDETECT_SEED = 0


def use_bundled_nltk_data() -> None:
    """Put the repo's NLTK data first on NLTK's search path (before any checker module is imported)."""
    import nltk

    if str(NLTK_DATA_DIR) not in nltk.data.path:
        nltk.data.path.insert(0, str(NLTK_DATA_DIR))


@functools.cache
def instruction_registry() -> Mapping[str, type]:
    """IFEval instruction id -> checker class (Google's 25 ids)."""
    import langdetect

    use_bundled_nltk_data()
    langdetect.DetectorFactory.seed = LANGDETECT_SEED

    from data_pipeline.constraints.ifeval_lib import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


@functools.cache
def language_codes() -> Mapping[str, str]:
    """ISO 639-1 code -> language name accepted by `language:response_language`."""
    instruction_registry()
    from data_pipeline.constraints.ifeval_lib import instructions_util

    return instructions_util.LANGUAGE_CODES


def _ifeval_kwargs(kwargs: Mapping[str, object]) -> dict[str, object]:
    # Constraint params hold tuples (hashable); IFEval's checkers were written for lists.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def make_checker(checker_class: type, instruction_id: str, kwargs: Mapping[str, object], prompt: str | None = None):
    """(checker object, its instruction text) of an IFEval-style checker class (IFEval's or IFBench's).

    Mirrors the `evaluation_lib.test_instruction_following_strict` of both google-research and allenai/IFBench:
    a checker whose args name `prompt` gets the prompt passed in after its description is built.
    """
    checker = checker_class(instruction_id)
    description = checker.build_description(**kwargs)
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        if prompt is None:
            raise ValueError(f"{instruction_id} needs the prompt to be checked")
        checker.build_description(prompt=prompt)
    return checker, description


def checker_verdict(checker, response: str) -> bool:
    """A checker's verdict; an empty response fails, as in IFEval's and IFBench's own evaluation."""
    return bool(response.strip()) and bool(checker.check_following(response))


def build_checker(instruction_id: str, kwargs: Mapping[str, object], prompt: str | None = None):
    """(IFEval checker object, its instruction text), built from `kwargs` (validated by the caller)."""
    return make_checker(instruction_registry()[instruction_id], instruction_id, _ifeval_kwargs(kwargs), prompt)


def _is_ascii_letter(char: str) -> bool:
    return "a" <= char.lower() <= "z"


# IFEval's letter_frequency checker replaces a `letter` that is not an ASCII letter by a random letter,
# and two IFEval prompts (keys 1122 and 1129 ask for '#' and '!') hit that. We count the character the
# prompt names instead, so the verdict is deterministic; for ASCII letters this is exactly IFEval's count.
def _other_char_frequency(kwargs: Mapping[str, object], response: str) -> bool:
    count = response.lower().count(str(kwargs["letter"]).lower())
    if kwargs["let_relation"] == "less than":
        return count < kwargs["let_frequency"]
    return count >= kwargs["let_frequency"]


def _needs_other_char(instruction_id: str, kwargs: Mapping[str, object]) -> bool:
    return instruction_id == "keywords:letter_frequency" and not _is_ascii_letter(str(kwargs["letter"]))


def ifeval_check(instruction_id: str, kwargs: Mapping[str, object], response: str, prompt: str | None = None) -> bool:
    """IFEval's strict verdict; an empty response fails, as in IFEval's own evaluation."""
    if not response.strip():
        return False
    if _needs_other_char(instruction_id, kwargs):
        return _other_char_frequency(kwargs, response)
    checker, _ = build_checker(instruction_id, kwargs, prompt)
    return checker_verdict(checker, response)


def ifeval_description(instruction_id: str, kwargs: Mapping[str, object]) -> str:
    if _needs_other_char(instruction_id, kwargs):
        return (
            f"In your response, the character {kwargs['letter']} should appear {kwargs['let_relation']} "
            f"{kwargs['let_frequency']} times."
        )
    checker = instruction_registry()[instruction_id](instruction_id)
    return checker.build_description(**_ifeval_kwargs(kwargs))


@functools.cache
def conflicting_ids() -> Mapping[str, frozenset[str]]:
    """IFEval instruction id -> the ids it must not be combined with (the registry's conflict lists, made symmetric;
    every id conflicts with itself)."""
    instruction_registry()
    from data_pipeline.constraints.ifeval_lib import instructions_registry

    conflicts = instructions_registry.conflict_make(
        {k: set(v) for k, v in instructions_registry.INSTRUCTION_CONFLICTS.items()}
    )
    return {k: frozenset(v) for k, v in conflicts.items()}
