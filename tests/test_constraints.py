"""Constraint library: reversals on real IFEval rows + GPT-4 responses, param validation, no JAX import."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from data_pipeline.constraints import (
    NON_REVERSIBLE_TYPES,
    REVERSIBLE_TYPES,
    Constraint,
    ConstraintError,
    check,
    constraints_from_ifeval_row,
    is_reversible,
    render,
    reverse,
)
from data_pipeline.constraints.ifeval import ifeval_check
from data_pipeline.constraints.params import IFEVAL_PARAM_SCHEMAS
from data_pipeline.constraints.reversal import CONSTRAINED_RESPONSE_OPTIONS, NEGATED_BASE

REPO = Path(__file__).resolve().parents[1]
IFEVAL_DIR = REPO / "data_pipeline" / "assets" / "ifeval"
FILTERED = IFEVAL_DIR / "filtered_input_data.jsonl"
GPT4 = IFEVAL_DIR / "input_response_data_gpt4_20231107_145030.jsonl"
MAX_CONSTRAINTS_PER_TYPE = 6


def _load_examples() -> list[tuple[Constraint, str, str, dict]]:
    """(constraint, prompt, GPT-4 response, original row kwargs) for every constraint of filtered IFEval."""
    responses = {}
    for text in GPT4.read_text(encoding="utf-8").splitlines():
        record = json.loads(text)
        responses[record["prompt"]] = record["response"]
    examples = []
    for line, text in enumerate(FILTERED.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(text)
        for c in constraints_from_ifeval_row(row, str(FILTERED), line):
            examples.append((c, row["prompt"], responses[row["prompt"]], row))
    return examples


EXAMPLES = _load_examples()


def _synthetic_edits(c: Constraint, prompt: str, response: str) -> list[str]:
    """Edits of a real response that move it across the line of many IFEval checkers."""
    edits = [
        response,
        response + ", and that is all",
        response.replace(",", ""),
        f'"{response}"',
        "<<A Short Title>>\n" + response,
        re.sub(r"<<[^\n]+>>", "", response),
        response + "\nP.S. one more thing",
        response + "\nP.P.S one more thing",
        re.split(r"\n\s*P\.", response)[0],
        json.dumps({"answer": response}),
        response[: len(response) // 3],
        response + "\n\n" + response,
        response.upper(),
        response.lower(),
        prompt + "\n" + response,
        CONSTRAINED_RESPONSE_OPTIONS[0] + " " + response,
        response.replace("*", ""),
        response + "\n* one more bullet\n*** \nmore",
        response + " [placeholder] *highlighted* SECTION 9 Section 9",
    ]
    for value in c.kwargs.values():
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str):
                edits.append(response + " " + text)
                edits.append(re.sub(re.escape(text), "", response, flags=re.IGNORECASE))
    return [e for e in edits if e.strip()]


@pytest.mark.parametrize("type_", sorted(set(IFEVAL_PARAM_SCHEMAS) - set(NON_REVERSIBLE_TYPES)))
def test_reversal_is_exact_complement_on_real_rows(type_):
    cases = [e for e in EXAMPLES if e[0].type == type_][:MAX_CONSTRAINTS_PER_TYPE]
    assert cases, f"no IFEval row uses {type_}"
    verdicts = set()
    for c, prompt, response, _ in cases:
        rev = reverse(c)
        assert rev is not None and rev != c
        assert reverse(rev) == c
        for y in _synthetic_edits(c, prompt, response):
            verdict = check(c, y, prompt)
            verdicts.add(verdict)
            assert check(rev, y, prompt) == (not verdict), (c, rev, y[:200])
    # Both sides of every type were exercised, so the assertion above was tested on passing and failing text.
    assert verdicts == {True, False}, type_


def test_real_gpt4_responses_flip_for_every_constraint():
    checked = 0
    for c, prompt, response, _ in EXAMPLES:
        rev = reverse(c)
        if rev is None:
            assert c.type in NON_REVERSIBLE_TYPES
            continue
        assert check(rev, response, prompt) == (not check(c, response, prompt))
        checked += 1
    assert checked > 700


def test_split_keywords_keep_the_rows_verdict():
    # Multi-keyword existence / forbidden_words are split per keyword; the parts' conjunction is
    # IFEval's verdict.
    seen_multi = 0
    for type_, name in (("keywords:existence", "keywords"), ("keywords:forbidden_words", "forbidden_words")):
        rows = {id(row): (row, prompt, response) for c, prompt, response, row in EXAMPLES if c.type == type_}
        for row, prompt, response in rows.values():
            for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"], strict=True):
                if instruction_id != type_:
                    continue
                parts = [Constraint.make(type_, **{name: (k,)}) for k in kwargs[name]]
                seen_multi += len(kwargs[name]) > 1
                assert all(check(p, response) for p in parts) == ifeval_check(type_, kwargs, response, prompt)
    assert seen_multi > 10


def test_multi_keyword_constraint_has_no_clean_reversal():
    c = Constraint.make("keywords:existence", keywords=["alpha", "beta"])
    assert reverse(c) is None
    assert check(c, "alpha and beta") and not check(c, "alpha only")


def test_relation_flip_and_types_table():
    c = Constraint.make("length_constraints:number_words", num_words=3, relation="at least")
    assert reverse(c) == Constraint.make("length_constraints:number_words", num_words=3, relation="less than")
    assert check(c, "one two three") and not check(reverse(c), "one two three")
    assert check(reverse(c), "one two") and not check(c, "one two")
    ifeval_ids = set(IFEVAL_PARAM_SCHEMAS)
    assert len(ifeval_ids) == 25
    assert set(NON_REVERSIBLE_TYPES) == {
        "language:response_language",
        "combination:two_responses",
        "length_constraints:nth_paragraph_first_word",
    }
    assert ifeval_ids - set(NON_REVERSIBLE_TYPES) <= REVERSIBLE_TYPES
    assert set(NEGATED_BASE) <= REVERSIBLE_TYPES
    assert not is_reversible("combination:two_responses") and is_reversible("rpo:has_comma")
    with pytest.raises(ConstraintError, match="unknown constraint type"):
        is_reversible("keywords:nonsense")


def test_case_reversal_is_not_the_opposite_case():
    lower = Constraint.make("change_case:english_lowercase")
    text = "this answer is written in english and only uses lowercase letters for every word."
    assert check(lower, text) and not check(reverse(lower), text)
    assert check(reverse(lower), text.capitalize())
    assert not check(Constraint.make("change_case:english_capital"), text.capitalize())


def test_empty_response_fails_constraint_and_reversal():
    c = Constraint.make("punctuation:no_comma")
    assert not check(c, "  \n") and not check(reverse(c), "  \n")


def test_non_letter_letter_frequency_counts_that_character():
    # IFEval would draw a random letter for '#'; we count '#', deterministically.
    c = Constraint.make("keywords:letter_frequency", letter="#", let_frequency=2, let_relation="at least")
    assert check(c, "#one #two") and not check(c, "#one two")
    assert check(reverse(c), "#one two")
    assert render(c) == render(c) and "#" in render(c)


def test_render_is_deterministic_and_names_parameters():
    for c, *_ in EXAMPLES:
        for k in (c, reverse(c)) if reverse(c) is not None else (c,):
            text = render(k)
            assert text and text == render(k)
    rev = reverse(Constraint.make("detectable_content:number_placeholders", num_placeholders=4))
    assert rev.type == "rpo:fewer_placeholders" and "fewer than 4" in render(rev)
    assert "alpha" in render(reverse(Constraint.make("keywords:forbidden_words", forbidden_words=["alpha"])))


def test_constrained_response_options_match_ifeval():
    from if_verifiable.ifeval import instructions

    assert CONSTRAINED_RESPONSE_OPTIONS == instructions._CONSTRAINED_RESPONSE_OPTIONS


def test_constraint_is_canonical_and_hashable():
    a = Constraint("keywords:frequency", (("relation", "at least"), ("keyword", "x"), ("frequency", 2)))
    b = Constraint.make("keywords:frequency", keyword="x", frequency=2, relation="at least")
    assert a == b and hash(a) == hash(b)
    assert [name for name, _ in a.params] == ["frequency", "keyword", "relation"]
    assert Constraint.make("keywords:existence", keywords=["k"]).params == (("keywords", ("k",)),)


ROW = {
    "key": 1,
    "prompt": "p",
    "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
    "kwargs": [{}, {"num_words": 10, "relation": "at least"}],
}


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (
            lambda r: r["instruction_id_list"].__setitem__(1, "length:nope"),
            "instruction_id_list[1]",
            "unknown constraint type",
        ),
        (lambda r: r["kwargs"][1].__setitem__("num_words", -1), "kwargs[1].num_words", "must be >= 0"),
        (lambda r: r["kwargs"][1].__setitem__("num_words", "10"), "kwargs[1].num_words", "must be an integer"),
        (lambda r: r["kwargs"][1].__setitem__("relation", "more than"), "kwargs[1].relation", "must be one of"),
        (lambda r: r["kwargs"][1].pop("relation"), "kwargs[1].relation", "missing"),
        (lambda r: r["kwargs"][0].__setitem__("extra", 1), "kwargs[0].extra", "unknown parameter"),
        (lambda r: r["kwargs"].pop(), "kwargs", "one dict per instruction id"),
        (
            lambda r: r.__setitem__("instruction_id_list", "punctuation:no_comma"),
            "instruction_id_list",
            "list of strings",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(edit, field, message):
    row = json.loads(json.dumps(ROW))
    edit(row)
    with pytest.raises(ConstraintError) as err:
        constraints_from_ifeval_row(row, "data/rows.jsonl", 7)
    assert f"data/rows.jsonl:7: field {field!r}" in str(err.value)
    assert message in str(err.value)


def test_bad_params_in_constructor():
    with pytest.raises(ConstraintError, match="single non-space character"):
        Constraint.make("keywords:letter_frequency", letter="ab", let_frequency=1, let_relation="at least")
    with pytest.raises(ConstraintError, match="must be <= num_paragraphs"):
        Constraint.make(
            "length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=3, first_word="so"
        )
    with pytest.raises(ConstraintError, match="regular expression"):
        Constraint.make("keywords:existence", keywords=["(unclosed"])


def test_none_kwargs_mean_absent():
    row = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None, "relation": None}]}
    assert constraints_from_ifeval_row(row, "x.jsonl", 1) == [Constraint.make("punctuation:no_comma")]
