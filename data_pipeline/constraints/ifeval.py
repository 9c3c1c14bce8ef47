"""IFEval's checkers from the registry package `if-verifiable` (its `if_verifiable.ifeval` is Google's
`instruction_following_eval` code), set up for offline, repeatable use, with three rules fixed.

Offline: the checkers need NLTK's punkt_tab English model; it ships with the repo under
`data_pipeline/assets/nltk_data`, put first on `nltk.data.path`, and `nltk.download` is switched off while the
package is imported (`if_verifiable.ifbench` calls it at import time for data it may not find). Repeatable:
`langdetect` is randomised unless seeded; we seed it so a response always gets the same verdict.

Fixed rules (docs/algorithms.md §5: the reversal of a wrong check is a pair with a wrong label):
- `detectable_content:postscript` with a marker other than IFEval's own `P.S.` / `P.P.S`: IFEval puts the marker
  into a regular expression unescaped and unbounded, so "P.D." matches "pedir" and "Nota" matches "notable".
  We match the marker literally, as a whole word at the start of a line (after any markup such as `**`): where a
  postscript starts, and what the reversal `rpo:no_postscript` tells the model to avoid.
- `change_case:english_capital`: IFEval asks langdetect about the text as written, and langdetect misreads
  upper-case text (upper-case Spanish comes out as English, Portuguese or Catalan). We ask about the lower-cased
  text; the case test itself is IFEval's. (`english_lowercase` asks about lower-case text already.)
- `keywords:letter_frequency` with a `letter` that is not an ASCII letter: IFEval draws a random letter instead
  (two IFEval prompts ask for '#' and '!'); we count the character the prompt names.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping

from data_pipeline.files import ASSETS_DIR

NLTK_DATA_DIR = ASSETS_DIR / "nltk_data"
# Seed used for langdetect's sampling; any fixed value makes verdicts repeatable.
LANGDETECT_SEED = 0
# Markers whose patterns IFEval spells out itself (tolerant spacing); any other marker is matched literally.
IFEVAL_POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")


@contextlib.contextmanager
def offline_nltk() -> Iterator[list[str]]:
    """The repo's NLTK data first on NLTK's path, and `nltk.download` refused while the block runs.

    Yields the names of the packages something asked to download (they stay missing: the checkers that need
    them are reported as unsupported, see `ifbench.NLTK_DATA_NEEDED`).
    """
    import nltk

    if str(NLTK_DATA_DIR) not in nltk.data.path:
        nltk.data.path.insert(0, str(NLTK_DATA_DIR))
    requested: list[str] = []
    real_download = nltk.download

    def refuse_download(info_or_id=None, *args, **kwargs) -> bool:
        requested.append(str(info_or_id))
        return False

    nltk.download = refuse_download
    try:
        yield requested
    finally:
        nltk.download = real_download


@functools.cache
def instruction_registry() -> Mapping[str, type]:
    """IFEval instruction id -> checker class (Google's 25 ids)."""
    import langdetect

    langdetect.DetectorFactory.seed = LANGDETECT_SEED
    with offline_nltk():
        from if_verifiable.ifeval import instructions_registry
    return instructions_registry.INSTRUCTION_DICT


@functools.cache
def language_codes() -> Mapping[str, str]:
    """ISO 639-1 code -> language name accepted by `language:response_language`."""
    instruction_registry()
    from if_verifiable.ifeval import instructions_util

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


def _other_char_frequency(kwargs: Mapping[str, object], response: str) -> bool:
    count = response.lower().count(str(kwargs["letter"]).lower())
    if kwargs["let_relation"] == "less than":
        return count < kwargs["let_frequency"]
    return count >= kwargs["let_frequency"]


def postscript_pattern(marker: str) -> re.Pattern:
    """`marker` literally, as a whole word opening a line (IFEval's checker is used for its own two markers)."""
    pattern = r"^[^\w\n]*" + re.escape(marker.strip().lower())
    if re.match(r"\w", marker.strip()[-1]):
        pattern += r"(?!\w)"
    return re.compile(pattern, flags=re.MULTILINE)


def _is_english(text: str) -> bool:
    import langdetect

    instruction_registry()  # seeds langdetect
    try:
        return langdetect.detect(text.lower()) == "en"
    except langdetect.LangDetectException:
        return True  # IFEval's rule: a text langdetect cannot read passes the language part


# IFEval ids whose rule we replace (see the module docstring): id -> (applies to these kwargs?, verdict).
_FIXED_RULES = {
    "keywords:letter_frequency": (
        lambda kw: not _is_ascii_letter(str(kw["letter"])),
        _other_char_frequency,
    ),
    "detectable_content:postscript": (
        lambda kw: str(kw["postscript_marker"]).strip() not in IFEVAL_POSTSCRIPT_MARKERS,
        lambda kw, y: postscript_pattern(str(kw["postscript_marker"])).search(y.lower()) is not None,
    ),
    "change_case:english_capital": (lambda kw: True, lambda kw, y: y.isupper() and _is_english(y)),
}


def ifeval_check(instruction_id: str, kwargs: Mapping[str, object], response: str, prompt: str | None = None) -> bool:
    """IFEval's strict verdict (with the fixed rules above); an empty response fails, as in IFEval."""
    if not response.strip():
        return False
    applies, verdict = _FIXED_RULES.get(instruction_id, (lambda kw: False, None))
    if applies(kwargs):
        return bool(verdict(kwargs, response))
    checker, _ = build_checker(instruction_id, kwargs, prompt)
    return checker_verdict(checker, response)


def ifeval_description(instruction_id: str, kwargs: Mapping[str, object]) -> str:
    if instruction_id == "keywords:letter_frequency" and not _is_ascii_letter(str(kwargs["letter"])):
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
    from if_verifiable.ifeval import instructions_registry

    conflicts = instructions_registry.conflict_make(
        {k: set(v) for k, v in instructions_registry.INSTRUCTION_CONFLICTS.items()}
    )
    return {k: frozenset(v) for k, v in conflicts.items()}
