"""Our reversed constraint ids (`rpo:*`): each one is the negation of one IFEval checker, same parameters.

The verdict of `rpo:X` on a non-empty response is `not IFEval(base id)`, so the complement is exact by
construction; what lives here is the mapping and the instruction text a model reads. The wording describes
IFEval's checker literally (e.g. "square brackets", "double angular brackets", the exact phrase) so that a
response written to the text passes the check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# IFEval id -> our id for its negation (docs/algorithms.md §5 "Reversal table", its clean and careful rows).
NEGATION_OF: dict[str, str] = {
    "detectable_content:number_placeholders": "rpo:fewer_placeholders",
    "detectable_format:number_highlighted_sections": "rpo:fewer_highlighted_sections",
    "detectable_format:multiple_sections": "rpo:fewer_sections",
    "keywords:existence": "rpo:omit_keyword",
    "keywords:forbidden_words": "rpo:include_word",
    "punctuation:no_comma": "rpo:has_comma",
    "detectable_format:title": "rpo:no_title",
    "detectable_content:postscript": "rpo:no_postscript",
    "startend:quotation": "rpo:not_quoted",
    "startend:end_checker": "rpo:not_end_with",
    "detectable_format:number_bullet_lists": "rpo:bullet_count_not",
    "length_constraints:number_paragraphs": "rpo:paragraph_count_not",
    "detectable_format:json_format": "rpo:not_json",
    "detectable_format:constrained_response": "rpo:no_constrained_answer",
    "combination:repeat_prompt": "rpo:not_repeat_prompt",
    # IFEval's case checkers also require langdetect to say English (and pass when detection fails), so the
    # exact negation is "not (all lowercase AND English)", which is what the text below asks for. It is not
    # "has an uppercase letter", and "all uppercase" is not the reversal of "all lowercase".
    "change_case:english_lowercase": "rpo:not_english_lowercase",
    "change_case:english_capital": "rpo:not_english_capital",
}

NEGATED_BASE: dict[str, str] = {negated: base for base, negated in NEGATION_OF.items()}
assert len(NEGATED_BASE) == len(NEGATION_OF)

# Keep the options text in sync with IFEval's `_CONSTRAINED_RESPONSE_OPTIONS`; a test compares them.
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

_RENDERERS: dict[str, Callable[[Mapping[str, object]], str]] = {
    "rpo:fewer_placeholders": lambda kw: (
        f"The response must contain fewer than {kw['num_placeholders']} placeholders represented by square "
        "brackets, such as [address]."
    ),
    "rpo:fewer_highlighted_sections": lambda kw: (
        f"Highlight fewer than {kw['num_highlights']} sections in your answer with markdown, i.e. "
        "*highlighted section*."
    ),
    "rpo:fewer_sections": lambda kw: (
        f"Your response must have fewer than {kw['num_sections']} sections marked with "
        f"{kw['section_spliter']} X, such as: {kw['section_spliter']} 1."
    ),
    "rpo:omit_keyword": lambda kw: (
        f"Do not include the keyword {kw['keywords'][0]!r} anywhere in the response, not even as part of another word."
    ),
    "rpo:include_word": lambda kw: f"Include the word {kw['forbidden_words'][0]!r} in the response.",
    "rpo:has_comma": lambda kw: "Use at least one comma in your response.",
    "rpo:no_title": lambda kw: (
        "Do not give your answer a title wrapped in double angular brackets such as <<poem of joy>>; do not "
        "use double angular brackets at all."
    ),
    "rpo:no_postscript": lambda kw: (
        f"Do not add a postscript starting with {kw['postscript_marker']}, and do not start any line with "
        f"{kw['postscript_marker']}."
    ),
    "rpo:not_quoted": lambda kw: "Do not wrap your entire response with double quotation marks.",
    "rpo:not_end_with": lambda kw: f'Do not finish your response with the phrase "{kw["end_phrase"]}".',
    "rpo:bullet_count_not": lambda kw: (
        f"Your answer must not contain exactly {kw['num_bullets']} bullet points (markdown lines "
        "starting with * or -); use a different number."
    ),
    "rpo:paragraph_count_not": lambda kw: (
        f"Your response must not consist of exactly {kw['num_paragraphs']} paragraphs separated by the "
        "markdown divider ***; use a different number."
    ),
    "rpo:not_json": lambda kw: "Your response must not be valid JSON; write plain prose instead.",
    "rpo:no_constrained_answer": lambda kw: (
        f"Do not answer with any of the following options: {CONSTRAINED_RESPONSE_OPTIONS}."
    ),
    "rpo:not_repeat_prompt": lambda kw: (
        "Do not begin your response by repeating the request; start directly with your answer."
    ),
    "rpo:not_english_lowercase": lambda kw: (
        "Do not write your entire response in English lowercase letters: use at least one capital letter."
    ),
    "rpo:not_english_capital": lambda kw: (
        "Do not write your entire response in English capital letters: use at least one lowercase letter."
    ),
}
assert set(_RENDERERS) == set(NEGATED_BASE)


def render_negation(type_: str, kwargs: Mapping[str, object]) -> str:
    return _RENDERERS[type_](kwargs)


# IFEval ids whose own description reads badly once filled in ("Do not include keywords ['very'] in the
# response.", "... this exact phrase Any other questions?. No other words ..."): the same requirement, worded
# like the reversals above, for the prompts we write (synthesized instructions and RPO's reversed prompts).
# IFEval's own prompts are never re-rendered.
CLEARER_WORDING: dict[str, Callable[[Mapping[str, object]], str]] = {
    "keywords:existence": lambda kw: (
        "Include the keyword"
        + ("s " if len(kw["keywords"]) > 1 else " ")
        + ", ".join(repr(k) for k in kw["keywords"])
        + " in the response."
    ),
    "keywords:forbidden_words": lambda kw: (
        "Do not include the word"
        + ("s " if len(kw["forbidden_words"]) > 1 else " ")
        + ", ".join(repr(w) for w in kw["forbidden_words"])
        + " anywhere in the response."
    ),
    "startend:end_checker": lambda kw: (
        f'Finish your response with this exact phrase: "{kw["end_phrase"]}". No other words should follow it.'
    ),
}
