"""Pair recipes: the RPO/IOPO invariants re-checked from the output, handmade pools, and the imports."""

from __future__ import annotations

import argparse
import json

import pytest
from pairs_fixtures import DPO_EN_DEMO, HH_SLICE, IFEVAL_PROMPTS, TRACE_SAMPLE, read_jsonl, write_ifeval_pool

from data_pipeline import constraints as cons
from data_pipeline.pairs import cli as build_pairs
from data_pipeline.pairs.imports import import_pairs
from data_pipeline.pairs.instructions import Instruction
from data_pipeline.pairs.pool import OVERRIDE_HEADER, ConstraintOracle
from data_pipeline.pairs.pool_builder import build_pools, match_responses
from data_pipeline.pairs.readers import iter_json_rows
from data_pipeline.pairs.rpo import rpo_pairs
from data_pipeline.pairs.schema import PairRecord
from data_pipeline.pairs.stats import BuildStats


def _build(tmp_path, recipe, *extra):
    parser = argparse.ArgumentParser()
    build_pairs.add_arguments(parser)
    out = tmp_path / f"out_{recipe}"
    assert build_pairs.run(parser.parse_args(["--recipe", recipe, "--output", str(out), *extra])) == 0
    return read_jsonl(out / "pairs.jsonl"), json.loads((out / "stats.json").read_text())


def _ifeval_rows() -> dict[str, dict]:
    return {str(r["key"]): r for r in read_jsonl(IFEVAL_PROMPTS)}


def _listed_constraints(row: dict, listed: list[dict]) -> list[cons.Constraint]:
    """The constraints of an emitted prompt, rebuilt from the IFEval row and the provenance's reversal flags."""
    original = cons.constraints_from_ifeval_row(row, "ifeval", 0)
    out = []
    for entry in listed:
        c = original[int(entry["id"].split("~")[0][1:])]
        out.append(cons.reverse(c) if entry["reversed"] else c)
    return out


@pytest.fixture(scope="module")
def ifeval_pool(tmp_path_factory):
    return write_ifeval_pool(tmp_path_factory.mktemp("pool"))


@pytest.mark.parametrize("min_g", [1, 3])
def test_rpo_pairs_satisfy_invariant_on_real_ifeval(tmp_path, ifeval_pool, min_g):
    instructions, responses, n_rows = ifeval_pool
    pairs, stats = _build(
        tmp_path, "rpo", "--input", str(instructions), "--responses", str(responses), "--min-g", str(min_g)
    )
    assert len(pairs) >= (10 if min_g == 1 else 1)
    rows = _ifeval_rows()
    for pair in pairs:
        record = PairRecord.from_json(pair, "pairs.jsonl", 0)
        row = rows[record.group_id]
        listed = _listed_constraints(row, pair["provenance"]["prompt_constraints"])
        chosen, rejected = record.sequences[0].response, record.sequences[1].response
        assert all(cons.check(c, chosen) for c in listed)  # K/K
        assert sum(not cons.check(c, rejected) for c in listed) == record.margin >= min_g  # K - g
        prompt = record.sequences[0].messages[-1].content
        if any(e["reversed"] for e in pair["provenance"]["prompt_constraints"]):
            assert prompt.startswith(row["prompt"]) and OVERRIDE_HEADER in prompt
            assert all(cons.render(c) in prompt for c in listed)
        else:
            assert prompt == row["prompt"]
    # Every response row has exactly one outcome; every emitted pair is counted under its g.
    assert stats["responses"]["total"] == n_rows == sum(stats["responses"]["by_outcome"].values())
    assert sum(stats["pairs_by_g"].values()) == len(pairs) == stats["emitted_records"]
    # Mirrors: (x_Si; yi > yj) comes with (x_Sj; yj > yi) unless x_Sj cannot exist (non-reversible failed).
    by_responses = {
        (p["provenance"]["chosen"]["response_id"], p["provenance"]["rejected"]["response_id"]) for p in pairs
    }
    missing = [(a, b) for a, b in by_responses if (b, a) not in by_responses]
    assert len(missing) <= stats["candidate_drops"].get("direction_chosen_fails_unremovable_non_reversible", 0)


def _instruction(constraints: list[dict], task: str | None = None) -> Instruction:
    obj = {
        "id": "toy",
        "turns": [{"role": "user", "content": "Write about cats."}],
        "constraints": constraints,
        "task": task,
    }
    return Instruction.from_json(obj, "toy.jsonl", 1)


NO_COMMA = {"id": "a", "type": "punctuation:no_comma"}
POSTSCRIPT = {"id": "b", "type": "detectable_content:postscript", "params": {"postscript_marker": "P.S."}}
TITLE = {"id": "c", "type": "detectable_format:title"}
ENGLISH = {"id": "d", "type": "language:response_language", "params": {"language": "en"}}


def _pairs_for(instruction: Instruction, texts: list[str], min_g: int = 3):
    from data_pipeline.pairs.readers import RawResponse

    stats = BuildStats("rpo", "responses")
    stats.inputs["responses_rows"] = len(texts)
    raw = [RawResponse("toy", None, t, str(i), "toy_responses.jsonl", i + 1, {}) for i, t in enumerate(texts)]
    oracle = ConstraintOracle(None, stats)
    pools = build_pools([instruction], match_responses([instruction], raw, stats, None), oracle, stats)
    pairs = list(rpo_pairs(pools, oracle, min_g, stats))
    stats.check_accounting()
    return pairs, stats


def test_rpo_handmade_pool_matches_hand_enumeration():
    good = "<<Cats>>\nCats sleep a lot and purr.\nP.S. Feed them."
    bad = "Cats, dogs, and birds."  # fails all three
    dup_bad = "Birds, fish, and cats."  # same verdicts as `bad`: deduped
    two_off = "<<Cats>>\nCats, dogs."  # fails no_comma and postscript only: g=2 vs good, 1 vs bad
    pairs, stats = _pairs_for(_instruction([NO_COMMA, POSTSCRIPT, TITLE]), [good, bad, dup_bad, two_off])
    assert [(p.sequences[0].response, p.sequences[1].response, p.margin) for p in pairs] == [
        (good, bad, 3),
        (bad, good, 3),
    ]
    # x_S for `bad` reverses every constraint; `good` keeps the original prompt.
    assert pairs[0].sequences[0].messages[-1].content == "Write about cats."
    assert [e["type"] for e in pairs[1].provenance["prompt_constraints"]] == [
        "rpo:has_comma",
        "rpo:no_postscript",
        "rpo:no_title",
    ]
    assert +stats.outcomes == {"in_pair": 2, "no_pair": 1, "duplicate_verdicts": 1}


def test_non_reversible_constraint_in_request_text_blocks_only_that_direction():
    # IFEval-style instruction (no separate task): a failed language constraint cannot be removed from the text.
    good, bad = "<<Cats>>\nCats sleep a lot and purr.\nP.S. Feed them.", "Die Katzen, die Hunde und die Vögel."
    pairs, stats = _pairs_for(_instruction([NO_COMMA, POSTSCRIPT, TITLE, ENGLISH]), [good, bad])
    assert [(p.sequences[0].response, p.margin) for p in pairs] == [(good, 4)]
    assert stats.candidate_drops["direction_chosen_fails_unremovable_non_reversible"] == 1
    assert stats.constraint_types["language:response_language"]["non_reversible_skipped"] == 1


def test_non_reversible_constraint_is_dropped_when_task_is_separate():
    good, bad = "<<Cats>>\nCats sleep a lot and purr.\nP.S. Feed them.", "Die Katzen, die Hunde und die Vögel."
    pairs, _ = _pairs_for(_instruction([NO_COMMA, POSTSCRIPT, TITLE, ENGLISH], task="Write about cats."), [good, bad])
    assert [(p.sequences[0].response, p.margin) for p in pairs] == [(good, 4), (bad, 3)]
    mirrored = pairs[1]
    assert mirrored.sequences[0].messages[-1].content.startswith("Write about cats.\n\nRequirements:\n1. ")
    assert "language" not in json.dumps(mirrored.provenance["prompt_constraints"])


def test_iopo_quads_from_pool_fit_their_definition(tmp_path, ifeval_pool):
    instructions, responses, _ = ifeval_pool
    quads, stats = _build(tmp_path, "iopo", "--input", str(instructions), "--responses", str(responses))
    assert quads
    rows = _ifeval_rows()
    for quad in quads:
        record = PairRecord.from_json(quad, "pairs.jsonl", 0)
        (x1, y1), (x1b, y2), (x2, y2b), (x2b, y1b) = [(s.messages, s.response) for s in record.sequences]
        assert (x1, x2, y1, y2) == (x1b, x2b, y1b, y2b) and x1 != x2
        row = rows[record.group_id]
        c1 = _listed_constraints(row, quad["provenance"]["x1_constraints"])
        c2 = _listed_constraints(row, quad["provenance"]["x2_constraints"])
        assert all(cons.check(c, y1) for c in c1) and all(cons.check(c, y2) for c in c2)
        assert sum(not cons.check(c, y1) for c in c2) == quad["provenance"]["g_21"] >= 3
        assert sum(not cons.check(c, y2) for c in c1) == quad["provenance"]["g_12"] >= 3
    assert sum(stats["responses"]["by_outcome"].values()) == stats["responses"]["total"]


def test_dpo_baseline_prefers_more_satisfied_constraints(tmp_path, ifeval_pool):
    instructions, responses, _ = ifeval_pool
    pairs, _ = _build(tmp_path, "dpo", "--input", str(instructions), "--responses", str(responses))
    rows = _ifeval_rows()
    assert pairs
    for pair in pairs:
        row = rows[pair["group_id"]]
        original = cons.constraints_from_ifeval_row(row, "ifeval", 0)
        chosen, rejected = (s["response"] for s in pair["sequences"])
        assert pair["sequences"][0]["messages"] == [{"role": "user", "content": row["prompt"]}] and pair["margin"] == 0
        assert sum(cons.check(c, chosen) for c in original) > sum(cons.check(c, rejected) for c in original)


def test_import_official_iopo_trace_sample(tmp_path):
    (quad,), stats = _build(tmp_path, "iopo", "--input", str(TRACE_SAMPLE))
    source = json.loads(TRACE_SAMPLE.read_text())[0]
    x1, x2 = (c["value"] for c in source["conversations"])
    y1, y2 = source["chosen"]["value"], source["rejected"]["value"]
    got = [(s["messages"], s["response"]) for s in quad["sequences"]]
    user = lambda text: [{"role": "user", "content": text}]
    assert got == [(user(x1), y1), (user(x1), y2), (user(x2), y2), (user(x2), y1)]
    assert stats["rows"] == {"total": 1, "by_outcome": {"emitted": 1}}


def test_import_sharegpt_slice(tmp_path):
    pairs, stats = _build(tmp_path, "dpo", "--input", str(DPO_EN_DEMO))
    source = json.loads(DPO_EN_DEMO.read_text())
    assert stats["rows"]["total"] == 50 == sum(stats["rows"]["by_outcome"].values())
    first = pairs[0]["sequences"]
    assert first[0]["messages"][-1] == {"role": "user", "content": source[0]["conversations"][-1]["value"]}
    assert first[0]["response"] == source[0]["chosen"]["value"]
    assert first[1]["response"] == source[0]["rejected"]["value"]
    with_system = next(i for i, row in enumerate(source) if row["conversations"][0]["from"] == "system")
    line = pairs[[p["provenance"]["line"] for p in pairs].index(with_system + 1)]
    assert line["sequences"][0]["messages"][0]["role"] == "system"


def test_import_hh_rlhf_slice_counts_prefix_mismatch_and_bad_rows(tmp_path):
    pairs, stats = _build(tmp_path, "dpo", "--input", str(HH_SLICE), "--skip-bad")
    assert stats["rows"]["by_outcome"] == {"bad_input": 2, "emitted": 46, "prefix_mismatch": 2}
    assert stats["bad_input"]["by_reason"] == {"bad_field": 1, "empty_response": 1}
    _, row = next(iter_json_rows(str(HH_SLICE)))
    cut = row["chosen"].rfind("\n\nAssistant:")
    assert pairs[0]["sequences"][0]["response"] == row["chosen"][cut + len("\n\nAssistant:") :].strip()
    assert pairs[0]["sequences"][0]["messages"][-1]["role"] == "user"


def _trl_file(tmp_path, rows):
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_import_trl_standard_conversational_and_implicit(tmp_path):
    conv_prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {
            "prompt": conv_prompt,
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {
            "chosen": [*conv_prompt, {"role": "assistant", "content": "Hey."}],
            "rejected": [*conv_prompt, {"role": "assistant", "content": "No."}],
        },
        {
            "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}],
        },
    ]
    stats = BuildStats("dpo", "rows")
    pairs = list(import_pairs(_trl_file(tmp_path, rows), "auto", "dpo", stats, None))
    assert [(p.sequences[0].messages[-1].content, p.sequences[0].response, p.sequences[1].response) for p in pairs] == [
        ("2+2?", "4", "5"),
        ("Hi?", "Hello.", "Go away."),
        ("Hi?", "Hey.", "No."),
    ]
    assert pairs[1].sequences[0].messages[0].role == "system"
    assert +stats.outcomes == {"emitted": 3, "prefix_mismatch": 1}
