"""`rpo-jax build-pairs`: CLI, held-out split, determinism, bad-input errors / --skip-bad, atomic output."""

from __future__ import annotations

import json

import pytest
from pairs_fixtures import IFEVAL_PROMPTS, read_jsonl, write_ifeval_pool

from data_pipeline.pairs import build as build_pairs
from data_pipeline.pairs.readers import read_pairs
from rpo_jax.cli import main


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_ifeval_pool(tmp_path_factory.mktemp("pool"))


def _cli(*args: str) -> int:
    return main(["build-pairs", *args])


def test_cli_split_is_by_group_and_deterministic(tmp_path, pool):
    instructions, responses, _ = pool
    common = [
        "--recipe",
        "rpo",
        "--input",
        str(instructions),
        "--responses",
        str(responses),
        "--eval-fraction",
        "0.2",
        "--seed",
        "3",
    ]
    assert _cli(*common, "--output", str(tmp_path / "a")) == 0
    assert _cli(*common, "--output", str(tmp_path / "b")) == 0
    for name in ("pairs.jsonl", "eval_pairs.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = read_pairs(str(tmp_path / "a" / "pairs.jsonl"))
    held_out = read_pairs(str(tmp_path / "a" / "eval_pairs.jsonl"))
    assert train and held_out
    assert not {r.group_id for r in train} & {r.group_id for r in held_out}
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["split"] == {"train": len(train), "eval": len(held_out)}
    assert stats["settings"]["min_g"] == 3 and len(stats["settings"]["inputs"]) == 2
    assert _cli(*common, "--seed", "4", "--output", str(tmp_path / "c")) == 0
    other = {r.group_id for r in read_pairs(str(tmp_path / "c" / "eval_pairs.jsonl"))}
    assert other != {r.group_id for r in held_out}  # the seed picks the held-out groups


def test_min_g_filters_pairs(tmp_path, pool):
    instructions, responses, _ = pool
    base = ["--recipe", "rpo", "--input", str(instructions), "--responses", str(responses)]
    assert _cli(*base, "--output", str(tmp_path / "g1"), "--min-g", "1") == 0
    assert _cli(*base, "--output", str(tmp_path / "g4"), "--min-g", "4") == 0
    low, high = read_jsonl(tmp_path / "g1" / "pairs.jsonl"), read_jsonl(tmp_path / "g4" / "pairs.jsonl")
    assert min(p["margin"] for p in low) == 1 and min(p["margin"] for p in high) >= 4
    assert {p["id"] for p in high} < {p["id"] for p in low}


def _ifeval_line(n: int = 1) -> dict:
    return json.loads(IFEVAL_PROMPTS.read_text().splitlines()[n - 1])


BAD_CASES = {
    "malformed_json": ("responses", '{"key": 1000, "response": "x"\n', "resp.jsonl:1: field '<json>'"),
    "missing_field": ("responses", json.dumps({"key": 1000}) + "\n", "resp.jsonl:1: field 'response': missing"),
    "empty_response": (
        "responses",
        json.dumps({"key": 1000, "response": "  "}) + "\n",
        "resp.jsonl:1: field 'response': is empty",
    ),
    "unknown_constraint_type": (
        "instructions",
        json.dumps({**_ifeval_line(), "instruction_id_list": ["x:y"], "kwargs": [{}]}) + "\n",
        "ins.jsonl:1: field 'instruction_id_list/kwargs'",
    ),
    "bad_params": (
        "instructions",
        json.dumps({**_ifeval_line(), "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": 3}]})
        + "\n",
        "ins.jsonl:1: field",
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_input_names_file_line_field_or_is_counted(tmp_path, capsys, reason):
    which, bad_line, message = BAD_CASES[reason]
    good_ins = json.dumps(_ifeval_line()) + "\n"
    good_resp = json.dumps({"key": 1000, "response": "A fine answer."}) + "\n"
    (tmp_path / "ins.jsonl").write_text(bad_line + good_ins if which == "instructions" else good_ins)
    (tmp_path / "resp.jsonl").write_text(bad_line + good_resp if which == "responses" else good_resp)
    args = ["--recipe", "rpo", "--input", str(tmp_path / "ins.jsonl"), "--responses", str(tmp_path / "resp.jsonl")]
    assert _cli(*args, "--output", str(tmp_path / "out")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # One good instruction with one response makes no pair: an error naming why, unless --allow-empty.
    assert _cli(*args, "--output", str(tmp_path / "out"), "--skip-bad") == 2
    assert "0 rpo records" in capsys.readouterr().err
    assert _cli(*args, "--output", str(tmp_path / "out"), "--skip-bad", "--allow-empty") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["bad_input"]["by_reason"] == {reason: 1}
    outcomes = stats["responses"]["by_outcome"]
    assert sum(outcomes.values()) == stats["responses"]["total"] == (2 if which == "responses" else 1)
    assert outcomes["bad_input"] == (1 if which == "responses" else 0)


def test_options_that_do_not_apply_are_rejected(tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    for args, message in (
        (
            ("--recipe", "dpo", "--input", "x.json", "--output", str(tmp_path / "o"), "--min-g", "2"),
            "--min-g and --judge",
        ),
        (("--recipe", "rpo", "--input", "x.json", "--output", str(tmp_path / "o")), "needs --responses"),
        (("--recipe", "dpo", "--input", "x.json", "--output", str(tmp_path / "exists")), "--overwrite"),
    ):
        assert _cli(*args) == 2
        assert message in capsys.readouterr().err


def test_crash_mid_write_leaves_no_dataset_and_keeps_the_old_one(tmp_path, pool, monkeypatch):
    instructions, responses, _ = pool
    args = ["--recipe", "rpo", "--input", str(instructions), "--responses", str(responses)]
    real_write = build_pairs.write_jsonl

    def crash_after_first_line(path, records):
        real_write(path, list(records)[:1])
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(build_pairs, "write_jsonl", crash_after_first_line)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cli(*args, "--output", str(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp folder remains
    monkeypatch.setattr(build_pairs, "write_jsonl", real_write)
    assert _cli(*args, "--output", str(tmp_path / "out")) == 0
    before = (tmp_path / "out" / "pairs.jsonl").read_bytes()
    monkeypatch.setattr(build_pairs, "write_jsonl", crash_after_first_line)
    with pytest.raises(RuntimeError):
        _cli(*args, "--output", str(tmp_path / "out"), "--overwrite", "--min-g", "1")
    assert (tmp_path / "out" / "pairs.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_zero_pairs_is_an_error_naming_the_main_drop_reason(tmp_path, capsys):
    # IFEval prompts with 1-2 constraints can never differ on 3: at the default --min-g 3 nothing is emitted.
    instructions, responses, _ = write_ifeval_pool(tmp_path, min_constraints=1, limit=6)
    rows = [json.loads(line) for line in instructions.read_text().splitlines()]
    instructions.write_text("".join(json.dumps(r) + "\n" for r in rows if len(r["instruction_id_list"]) <= 2))
    args = ["--recipe", "rpo", "--input", str(instructions), "--responses", str(responses)]
    assert _cli(*args, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "(--min-g 3)" in err and "--allow-empty" in err
    assert "'pair_hamming_below_min_g'" in err
    assert not (tmp_path / "out").exists()
    assert _cli(*args, "--output", str(tmp_path / "out"), "--allow-empty") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["emitted_records"] == 0 and stats["settings"]["allow_empty"] is True


def test_missing_input_and_unconfigured_judge_are_one_line_errors(tmp_path, capsys):
    free_form = {
        "id": "f",
        "turns": [{"role": "user", "content": "Write."}],
        "constraints": [{"id": "a", "type": "free_form", "text": "Be kind."}],
    }
    (tmp_path / "ins.jsonl").write_text(json.dumps(free_form) + "\n")
    (tmp_path / "resp.jsonl").write_text(json.dumps({"key": "f", "response": "Hello."}) + "\n")
    base = ["--recipe", "rpo", "--output", str(tmp_path / "out")]
    for args, message in (
        (["--input", str(tmp_path / "nope.jsonl"), "--responses", str(tmp_path / "resp.jsonl")], "no such input file"),
        (["--input", str(tmp_path / "ins.jsonl"), "--responses", str(tmp_path / "resp.jsonl")], "--judge-base-url"),
    ):
        assert _cli(*base, *args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_held_out_split_is_stable_when_a_group_comes_or_goes():
    from types import SimpleNamespace

    records = [SimpleNamespace(group_id=f"g{i}") for i in range(200) for _ in range(2)]
    _, held_out = build_pairs.split_by_group(records, 0.1, seed=0)
    before = {r.group_id for r in held_out}
    assert len(before) == 20
    for change in (records + [SimpleNamespace(group_id="new")], [r for r in records if r.group_id != "g7"]):
        _, held_out = build_pairs.split_by_group(change, 0.1, seed=0)
        assert len(before ^ {r.group_id for r in held_out}) <= 2  # at most one group in, one out
