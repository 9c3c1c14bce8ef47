"""Which languages each checker judges, and the language a row is written in.

IFEval's and IFBench's checkers encode English conventions: ASCII commas and double quotes, `<<title>>`, NLTK's
English sentence splitter, langdetect's "en". A row in another language is never judged by those rules (a
Japanese "、" would pass a no-comma rule, a 「」 quote fail a quotation rule), so each checker declares the
languages it judges (`CHECKER_LANGUAGES`), and a row whose language is not among them is refused
(`UnsupportedLanguageError`, which `--skip-bad` counts instead).

A row's language comes from a prefix on its instruction ids (`es:detectable_content:postscript`, as multilingual
IFEval variants write them) or from a `language` field; a row with neither is English, IFEval's language.
"""

from __future__ import annotations

import re

from data_pipeline.constraints.params import ConstraintError, where
from data_pipeline.constraints.reversal import NEGATED_BASE

DEFAULT_LANGUAGE = "en"
ANY_LANGUAGE = "*"
# Latin-script languages that separate words with spaces and use the ASCII comma: a literal, whole-word marker
# or word and a comma count mean the same there as in English.
SPACED_LATIN = frozenset({"en", "es", "pt", "it", "nl", "de", "fr"})
ENGLISH = frozenset({"en"})
ANY = frozenset({ANY_LANGUAGE})

# Checkers whose rule reads markup, JSON, or a string given in the parameters, so any language is judged the
# same way; or words / a marker / commas (SPACED_LATIN). Every other IFEval id, and every IFBench id, is English.
_NOT_ENGLISH_ONLY: dict[str, frozenset[str]] = {
    "detectable_format:json_format": ANY,
    "detectable_format:number_bullet_lists": ANY,
    "detectable_format:number_highlighted_sections": ANY,
    "detectable_format:multiple_sections": ANY,
    "detectable_content:number_placeholders": ANY,
    "length_constraints:number_paragraphs": ANY,
    "combination:two_responses": ANY,
    "combination:repeat_prompt": ANY,
    "startend:end_checker": ANY,
    "language:response_language": ANY,
    "keywords:letter_frequency": ANY,
    "keywords:existence": ANY,  # a substring search (IFEval's re.search)
    "keywords:frequency": ANY,
    "keywords:forbidden_words": SPACED_LATIN,  # \b word boundaries need spaces between words
    "detectable_content:postscript": SPACED_LATIN,  # a whole-word marker opening a line (ifeval.postscript_pattern)
    "punctuation:no_comma": SPACED_LATIN,  # the ASCII comma; Japanese "、" or Chinese "，" are other characters
    "detectable_format:title": SPACED_LATIN,  # <<title>>; Japanese titles are 『』
    "length_constraints:number_words": SPACED_LATIN,  # words are runs of \w between spaces / punctuation
}

_PREFIX = re.compile(r"^([a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?):(.+:.+)$")


class UnsupportedLanguageError(ConstraintError):
    """A row's language is not one its checker judges; `--skip-bad` counts these instead of failing."""


def checker_languages(instruction_id: str) -> frozenset[str]:
    """The languages the checker of `instruction_id` judges (IFEval, IFBench and `rpo:*` ids)."""
    return _NOT_ENGLISH_ONLY.get(NEGATED_BASE.get(instruction_id, instruction_id), ENGLISH)


def judges(instruction_id: str, language: str) -> bool:
    languages = checker_languages(instruction_id)
    return ANY_LANGUAGE in languages or language.split("-")[0].split("_")[0].lower() in languages


def split_language_prefix(instruction_id: str) -> tuple[str | None, str]:
    """(language prefix or None, the id without it): `es:keywords:existence` -> ("es", "keywords:existence")."""
    match = _PREFIX.match(instruction_id)
    return (match.group(1), match.group(2)) if match else (None, instruction_id)


def row_language(row: dict, ids: list[str], source: str | None, line: int | None) -> tuple[str, list[str]]:
    """(the row's language, its instruction ids without language prefixes); conflicting languages raise."""
    language = row.get("language")
    field = "language"
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise ConstraintError(f"{where(source, line, 'language')}: must be a language code like 'en', got {language!r}")
    stripped = []
    for index, instruction_id in enumerate(ids):
        prefix, base = split_language_prefix(instruction_id)
        stripped.append(base)
        if prefix is None:
            continue
        if language is not None and prefix.lower() != language.lower():
            raise ConstraintError(
                f"{where(source, line, f'instruction_id_list[{index}]')}: language prefix {prefix!r} disagrees "
                f"with {field} {language!r}"
            )
        language, field = prefix, f"instruction_id_list[{index}]"
    return (language or DEFAULT_LANGUAGE), stripped


def refuse_unjudged(instruction_id: str, language: str, source: str | None, line: int | None, field: str) -> None:
    """Raise UnsupportedLanguageError unless the checker of `instruction_id` judges `language`."""
    if not judges(instruction_id, language):
        languages = ", ".join(sorted(checker_languages(instruction_id)))
        raise UnsupportedLanguageError(
            f"{where(source, line, field)}: {instruction_id} is checked by rules for {languages} only, and this "
            f"row is in {language!r}; it is not judged by another language's rules (skip such rows with --skip-bad)"
        )
