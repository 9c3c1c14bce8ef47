"""The controlled response generator writes exactly the verdicts it is asked for (checked by the IFEval checkers),
responses to one instruction differ only where their verdicts do, and the verdict vectors of a data set make the
DPO baseline's best-vs-worst pair noisy exactly as often as asked (no JAX)."""

import random

import pytest

from data_pipeline import constraints as cons
from data_pipeline.pairs.controlled import (
    CONTROLLED_TYPES,
    SENTENCES,
    controlled_response,
    sample_constraints,
)
from data_pipeline.pairs.controlled_sets import (
    SplitSettings,
    best_worst,
    build_split,
    heldout_vectors,
    is_noisy,
    verdict_vectors,
)
from data_pipeline.pairs.synthesis import FORBIDDEN, KEYWORDS


def test_every_plan_is_met_exactly():
    rng = random.Random(0)
    for trial in range(30):
        k = 1 + trial % 6
        constraints = sample_constraints(rng, k, "urban gardening")
        assert len({c.type for c in constraints}) == k and {c.type for c in constraints} <= set(CONTROLLED_TYPES)
        verdicts = [rng.random() < 0.5 for _ in constraints]
        text = controlled_response(constraints, verdicts, "urban gardening", trial, rng)
        assert [cons.check(c, text) for c in constraints] == verdicts, (constraints, verdicts, text)


def test_responses_of_one_instruction_differ_only_where_their_verdicts_do():
    rng = random.Random(1)
    lowercase = cons.Constraint.make("change_case:english_lowercase")
    quotes = cons.Constraint.make("startend:quotation")
    yes = controlled_response([lowercase, quotes], [True, True], "amateur astronomy", 7, rng)
    no_quotes = controlled_response([lowercase, quotes], [True, False], "amateur astronomy", 7, rng)
    assert yes == f'"{no_quotes}"'


def test_the_body_never_names_a_keyword_or_a_forbidden_word():
    """Else a response would meet (or break) an unasked keyword constraint by accident."""
    body = " ".join(SENTENCES).lower()
    assert not [w for w in KEYWORDS if w in body]
    assert not [w for w in FORBIDDEN if f" {w} " in f" {body} "]


def test_constraints_never_name_a_word_of_the_topic():
    rng = random.Random(2)
    for _ in range(200):
        for c in sample_constraints(rng, 6, "urban gardening and community energy"):
            named = [*c.kwargs.get("keywords", ()), *c.kwargs.get("forbidden_words", ())]
            assert not [w for w in named if w in "urban gardening and community energy"]


@pytest.mark.parametrize("k", [3, 4, 6])
def test_noise_is_a_knob(k):
    rng = random.Random(k)
    for _ in range(30):
        clean = verdict_vectors(k, 4, False, rng)
        assert not any(is_noisy(a, b) and sum(a) > sum(b) for a in clean for b in clean)  # nested: no noisy pair
        noisy = verdict_vectors(k, 4, True, rng)
        best, worst = best_worst(noisy)
        assert sum(noisy[best]) > sum(noisy[worst]) and is_noisy(noisy[best], noisy[worst])


def test_heldout_vectors_hold_one_compliant_response():
    rng = random.Random(3)
    for k in range(1, 7):
        vectors = heldout_vectors(k, 4, rng)
        assert sum(all(v) for v in vectors) == 1 and len(set(vectors)) == len(vectors) == min(4, 2**k)


def test_build_split_is_deterministic_and_uses_heldout_tasks():
    split = SplitSettings("heldout", "test", count=3, min_k=1, max_k=3, responses=2)
    first, second = build_split(split, 0, "independent"), build_split(split, 0, "independent")
    assert first == second
    instructions, responses = first
    assert [r["id"] for r in instructions] == ["test-00000", "test-00001", "test-00002"]
    assert len(responses) == 6 and {r["generator"] for r in responses} == {"controlled"}
