"""M-IFEval's rules for its language-prefixed ids (`fr:`, `ja:`, `es:`, `en:`), so that a prefixed id is judged by
the rule the benchmark wrote for that language and never by IFEval's English rule where the two differ.

M-IFEval (Dussolle et al. 2025, arXiv 2502.04688; lightblue-tech/M-IFEval) gives each language its own checkers:
French titles are `##title##` (its `<<>>` is too close to «»), Japanese titles 『』, Japanese highlights 《》,
sections 第N章, bullets ・, quotes 「」 and commas 、, Spanish bullets `*` only. No registry package ships these rules
(none on PyPI; the benchmark is a repository whose requirements include vllm and spacy), so each rule judged here
was written from M-IFEval's checker for that language (upstream commit 22b1768) and is tested with native-language
responses (tests/test_mifeval_rules.py). A prefixed id resolves to one of:

- IFEval's checker (`ifeval.py`, our fixes included), where M-IFEval's check for that language is IFEval's code
  with IFEval's constants (`fr:detectable_format:json_format`, `ja:length_constraints:number_paragraphs`, ...).
  Its relation words are translated: "au moins"/"moins de", "以上"/"未満" are IFEval's "at least"/"less than";
  Spanish "al menos" is "at least" and "como máximo N" (<= N) is "less than N+1" on whole counts.
- a rule of `LANGUAGE_RULES`, written here for that language.
- nothing: the id is refused by name (`UnsupportedLanguageError`, which `--skip-bad` counts). Among them: French
  and Spanish word and sentence counts (their own tokenizers), Japanese keywords and letters (janome), furigana,
  kanji counts, nominal endings; `NO_RULE_REASON` says why for each group.

Departures, as for IFEval's own ids (`ifeval.py`): a postscript marker other than IFEval's `P.S.`/`P.P.S` is matched
literally as a whole word opening a line, where M-IFEval searches it anywhere unescaped ("PS" in "psychologie",
"Nota" in "notable").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from data_pipeline.constraints.languages import UnsupportedLanguageError
from data_pipeline.constraints.params import IFEVAL_PARAM_SCHEMAS, ConstraintError, Validator, where

LANGUAGES = ("en", "fr", "es", "ja")

# Relation word -> (IFEval's relation, amount added to the count), per language.
RELATION_WORDS: dict[str, dict[str, tuple[str, int]]] = {
    "en": {"at least": ("at least", 0), "less than": ("less than", 0)},
    "fr": {"au moins": ("at least", 0), "moins de": ("less than", 0)},
    "es": {"al menos": ("at least", 0), "como máximo": ("less than", 1)},  # at most N == fewer than N + 1
    "ja": {"以上": ("at least", 0), "未満": ("less than", 0)},
}
# IFEval id -> (its relation parameter, the count that relation applies to).
RELATION_COUNT = {
    "keywords:frequency": ("relation", "frequency"),
    "keywords:letter_frequency": ("let_relation", "let_frequency"),
    "change_case:capital_word_frequency": ("capital_relation", "capital_frequency"),
    "length_constraints:number_words": ("relation", "num_words"),
    "length_constraints:number_sentences": ("relation", "num_sentences"),
}
# Spanish ids that carry a `relation` M-IFEval's checker never reads: it always counts "at least".
_AT_LEAST_ONLY = {"detectable_content:number_placeholders", "detectable_format:number_highlighted_sections"}
_AT_LEAST_ONLY |= {"detectable_format:multiple_sections"}

_COMMON_WITH_IFEVAL = {
    "detectable_format:json_format",
    "combination:two_responses",
    "detectable_content:number_placeholders",
    "length_constraints:number_paragraphs",
    "language:response_language",
}
# Ids whose M-IFEval check, in that language, is IFEval's code with IFEval's constants.
SAME_AS_IFEVAL: dict[str, frozenset[str]] = {
    "en": frozenset(IFEVAL_PARAM_SCHEMAS),  # M-IFEval's English checkers are IFEval's
    "fr": frozenset(
        _COMMON_WITH_IFEVAL
        | {"keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency"}
        | {"length_constraints:nth_paragraph_first_word", "detectable_content:postscript"}
        | {"detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections"}
        | {"detectable_format:multiple_sections", "combination:repeat_prompt", "startend:end_checker"}
        | {"punctuation:no_comma", "change_case:capital_word_frequency"}
    ),
    "es": frozenset(
        _COMMON_WITH_IFEVAL
        | {"keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency"}
        | {"detectable_format:number_highlighted_sections", "detectable_format:multiple_sections"}
        | {"detectable_format:title", "combination:repeat_prompt", "punctuation:no_comma", "startend:quotation"}
        # M-IFEval searches "P.D." and "Nota" anywhere; ours opens a line, as for every marker (see above).
        | {"detectable_content:postscript"}
    ),
    "ja": frozenset(_COMMON_WITH_IFEVAL),
}


def _wrapped_title(opening: str, closing: str) -> Callable[[Mapping, str], bool]:
    pattern = re.compile(re.escape(opening) + r"[^\n]+" + re.escape(closing))

    def check(kwargs: Mapping, response: str) -> bool:
        return any(title.strip(opening + closing).strip() for title in pattern.findall(response))

    return check


def _whole_response_quoted(pairs: tuple[tuple[str, str], ...]) -> Callable[[Mapping, str], bool]:
    def check(kwargs: Mapping, response: str) -> bool:
        text = response.strip()
        return len(text) > 1 and any(text.startswith(a) and text.endswith(b) for a, b in pairs)

    return check


def _contains_one_of(options: tuple[str, ...]) -> Callable[[Mapping, str], bool]:
    return lambda kwargs, response: any(option in response.strip() for option in options)


def _without(character: str) -> Callable[[Mapping, str], bool]:
    return lambda kwargs, response: character not in response


def _ja_highlights(kwargs: Mapping, response: str) -> bool:
    marked = [h for h in re.findall(r"《[^\n《》]*》", response) if h.strip("《》").strip()]
    return len(marked) >= kwargs["num_highlights"]


def _ja_sections(kwargs: Mapping, response: str) -> bool:
    # A section opens with 第, a number (ASCII or full-width digits) and the splitter: 第1章, 第２節.
    splitter = r"\s?第[\d\uFF10-\uFF19]+" + re.escape(str(kwargs["section_spliter"])) + r"\s?"
    return len(re.split(splitter, response)) - 1 >= kwargs["num_sections"]


def _counted_lines(pattern: str) -> Callable[[Mapping, str], bool]:
    compiled = re.compile(pattern, flags=re.MULTILINE)
    return lambda kwargs, response: len(compiled.findall(response)) == kwargs["num_bullets"]


def _ja_end(kwargs: Mapping, response: str) -> bool:
    # Japanese has no case; a closing 」 or 』 around the whole answer or the phrase is not part of the ending.
    return response.strip().strip("」』").endswith(str(kwargs["end_phrase"]).strip().strip("」』"))


def _es_end(kwargs: Mapping, response: str) -> bool:
    # Spanish end phrases are written without their closing full stop, which the answer may add.
    text = response.strip().strip('"').lower()
    text = text[:-1] if text.endswith(".") else text
    return text.endswith(str(kwargs["end_phrase"]).strip().lower())


def _ja_repeat(kwargs: Mapping, response: str) -> bool:
    return response.strip().startswith(str(kwargs["prompt_to_repeat"]).strip())


def _has_enclosed(opening: str, closing: str) -> Callable[[Mapping, str], bool]:
    pattern = re.compile(re.escape(opening) + "[^" + re.escape(closing) + "]*" + re.escape(closing))
    return lambda kwargs, response: any(m[1:-1].strip() for m in pattern.findall(response))


def _forbidden_character(value: object) -> str | None:
    if not isinstance(value, str) or len(value) != 1 or value.isspace():
        return f"must be a single non-space character, got {value!r}"
    return None


def _no_forbidden_character(kwargs: Mapping, response: str) -> bool:
    return str(kwargs["forbidden_char"]).lower() not in response.lower()


# The accented letters M-IFEval's French "no accents" rule looks for.
FRENCH_ACCENTED = "àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝ"


@dataclass(frozen=True)
class LanguageRule:
    """A rule written for one language: its verdict on a non-empty response, and its parameters."""

    check: Callable[[Mapping, str], bool]
    params: Mapping[str, Validator]


def _rule(check: Callable[[Mapping, str], bool], like: str | None = None, **params: Validator) -> LanguageRule:
    """`like`: the IFEval id whose parameter schema this rule shares."""
    return LanguageRule(check, {**(IFEVAL_PARAM_SCHEMAS[like] if like else {}), **params})


LANGUAGE_RULES: dict[str, LanguageRule] = {
    "fr:detectable_format:title": _rule(_wrapped_title("##", "##")),
    "fr:startend:quotation": _rule(_whole_response_quoted((('"', '"'), ("'", "'"), ("«", "»")))),
    "fr:detectable_format:constrained_response": _rule(_contains_one_of(("Oui.", "Non.", "Peut-être."))),
    "fr:special_character:ethel_or_cedilla": _rule(_no_forbidden_character, forbidden_char=_forbidden_character),
    "fr:special_character:no_accents": _rule(lambda kw, y: not any(c in FRENCH_ACCENTED for c in y)),
    "fr:detectable_content:no_digits": _rule(lambda kw, y: re.search(r"\d", y) is None),
    "es:detectable_format:number_bullet_lists": _rule(
        _counted_lines(r"^\s*\*[^\*].*$"), like="detectable_format:number_bullet_lists"
    ),
    "es:startend:end_checker": _rule(_es_end, like="startend:end_checker"),
    "es:detectable_format:constrained_response": _rule(_contains_one_of(("Sí.", "No.", "Quizás."))),
    "es:punctuation:question_marks": _rule(_has_enclosed("¿", "?")),
    "es:punctuation:exclamation_marks": _rule(_has_enclosed("¡", "!")),
    "ja:detectable_format:title": _rule(_wrapped_title("『", "』")),
    "ja:detectable_format:number_highlighted_sections": _rule(
        _ja_highlights, like="detectable_format:number_highlighted_sections"
    ),
    "ja:detectable_format:multiple_sections": _rule(_ja_sections, like="detectable_format:multiple_sections"),
    "ja:detectable_format:number_bullet_lists": _rule(
        _counted_lines(r"^\s*・[^・].*$"), like="detectable_format:number_bullet_lists"
    ),
    "ja:startend:quotation": _rule(_whole_response_quoted((("「", "」"),))),
    "ja:punctuation:no_comma": _rule(_without("、")),
    "ja:punctuation:no_period": _rule(_without("。")),
    "ja:detectable_format:constrained_response": _rule(
        _contains_one_of(("はい、そうです。", "いいえ、違います。", "どちらとも言えません。"))
    ),
    "ja:startend:end_checker": _rule(_ja_end, like="startend:end_checker"),
    "ja:combination:repeat_prompt": _rule(_ja_repeat, like="combination:repeat_prompt"),
}

NO_RULE_REASON = (
    "M-IFEval judges it with that language's own tokenizer, segmenter or word lists, which are not written here"
)


def is_language_rule(instruction_id: str) -> bool:
    return instruction_id in LANGUAGE_RULES


def has_rule(language: str, base_id: str) -> bool:
    """Whether `language:base_id` is judged here (by IFEval's code or a rule written for the language)."""
    return base_id in SAME_AS_IFEVAL.get(language, ()) or f"{language}:{base_id}" in LANGUAGE_RULES


def refusal(prefixed_ids: list[str]) -> str:
    """Why these prefixed ids are not judged: one sentence naming them."""
    return (
        f"{', '.join(prefixed_ids)}: no rule for {'this id' if len(prefixed_ids) == 1 else 'these ids'} in "
        f"{'its' if len(prefixed_ids) == 1 else 'their'} language is written here ({NO_RULE_REASON}; the "
        "English IFEval rule is not used in its place)"
    )


def _translated_relations(language: str, base_id: str, kwargs: dict, source, line, index: int) -> dict:
    kwargs = dict(kwargs)
    words = RELATION_WORDS[language]
    if base_id in RELATION_COUNT:
        relation, count = RELATION_COUNT[base_id]
        if relation in kwargs:
            if kwargs[relation] not in words:
                field = f"kwargs[{index}].{relation}"
                raise ConstraintError(
                    f"{where(source, line, field)}: must be one of {tuple(words)} for {language}: ids, "
                    f"got {kwargs[relation]!r}"
                )
            kwargs[relation], added = words[kwargs[relation]]
            if isinstance(kwargs.get(count), int) and added:
                kwargs[count] += added
    elif language == "es" and base_id in _AT_LEAST_ONLY and "relation" in kwargs:
        if kwargs.pop("relation") != "al menos":
            raise ConstraintError(
                f"{where(source, line, f'kwargs[{index}].relation')}: M-IFEval's es:{base_id} always counts "
                "'al menos' (at least); another relation would not be judged as written"
            )
    return kwargs


def resolve(language: str, base_id: str, kwargs: dict, source, line, index: int) -> tuple[str, dict]:
    """(the id that judges `language:base_id`, its kwargs): an IFEval id with translated kwargs, or the prefixed id
    of a `LANGUAGE_RULES` rule with its kwargs validated. An id without a rule raises UnsupportedLanguageError."""
    prefixed = f"{language}:{base_id}"
    field = f"instruction_id_list[{index}]"
    if not has_rule(language, base_id):
        raise UnsupportedLanguageError(f"{where(source, line, field)}: {refusal([prefixed])}")
    if prefixed not in LANGUAGE_RULES:
        return base_id, _translated_relations(language, base_id, kwargs, source, line, index)
    schema = LANGUAGE_RULES[prefixed].params
    for name in kwargs:
        if name not in schema:
            raise ConstraintError(
                f"{where(source, line, f'kwargs[{index}].{name}')}: unknown parameter for {prefixed} "
                f"(expected {sorted(schema)})"
            )
    for name, validate in schema.items():
        problem = "missing" if name not in kwargs else validate(kwargs[name])
        if problem is not None:
            raise ConstraintError(f"{where(source, line, f'kwargs[{index}].{name}')}: {problem}")
    return prefixed, kwargs


def language_rule_check(instruction_id: str, kwargs: Mapping, response: str) -> bool:
    """The verdict of a `LANGUAGE_RULES` rule; an empty response fails, as in IFEval and M-IFEval."""
    return bool(response.strip()) and bool(LANGUAGE_RULES[instruction_id].check(kwargs, response))
