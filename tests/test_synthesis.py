"""`rpo-jax build-instructions`: synthesized multi-constraint instructions, and the DPO best-vs-worst baseline."""

import json

import pytest

from data_pipeline import constraints as cons
from data_pipeline.constraints.ifeval import conflicting_ids
from data_pipeline.pairs import synthesis
from data_pipeline.pairs.synthesis import SynthesisSettings, synthesize, word_ngrams
from rpo_jax.cli import main


@pytest.fixture(scope="module")
def built():
    return synthesize(SynthesisSettings(num_train=120, num_heldout=40, seed=3))


def test_constraints_are_conflict_free_reversible_and_in_range(built):
    train, heldout, _ = built
    conflicts = conflicting_ids()
    for rows, low, high in ((train, 3, 8), (heldout, 1, 8)):
        for row in rows:
            types = [c["type"] for c in row["constraints"]]
            assert low <= len(types) <= high and len(set(types)) == len(types)
            assert not any(b in conflicts[a] for i, a in enumerate(types) for b in types[i + 1 :])
            for c in row["constraints"]:
                constraint = cons.Constraint.make(c["type"], **c["params"])  # validates the parameters
                assert cons.is_reversible(c["type"]) and c["text"] in row["turns"][-1]["content"]
                assert cons.render(constraint) == c["text"]


def test_heldout_base_tasks_share_neither_template_nor_topic_with_training(built):
    train, heldout, stats = built
    spec = json.loads((synthesis.TASKS_DIR / "tasks.json").read_text())
    held_topics, train_topics = spec["topics"]["heldout"], spec["topics"]["train"]
    for row in heldout:
        assert any(t in row["task"] for t in held_topics) and not any(t in row["task"] for t in train_topics)
    assert not {r["task"] for r in train} & {r["task"] for r in heldout}
    assert stats["train_heldout_shared_base_tasks"] == 0


def test_no_base_task_shares_an_8gram_with_ifeval_or_ifbench(built, monkeypatch):
    train, heldout, stats = built
    grams = synthesis.benchmark_ngrams()
    assert not any(word_ngrams(r["task"]) & grams for r in train + heldout)
    assert stats["benchmark_overlap"]["base_tasks_dropped"] == {"train": [], "heldout": []}
    # The check is real: a task copying a benchmark prompt is dropped and listed.
    ifeval_prompt = json.loads(synthesis.BENCHMARK_PROMPTS[0].read_text().splitlines()[0])["prompt"]
    real = synthesis.base_tasks
    monkeypatch.setattr(synthesis, "base_tasks", lambda: {**real(), "train": [ifeval_prompt, *real()["train"]]})
    *_, leaked = synthesize(SynthesisSettings(num_train=5, num_heldout=0))
    assert leaked["benchmark_overlap"]["base_tasks_dropped"]["train"] == [ifeval_prompt]


def test_same_seed_same_instructions_and_cli_writes_all_files(tmp_path, built):
    assert synthesize(SynthesisSettings(num_train=120, num_heldout=40, seed=3)) == built
    assert main(["build-instructions", "--output", str(tmp_path / "i"), "--num-train", "6", "--num-heldout", "3"]) == 0
    prompts = [json.loads(line) for line in (tmp_path / "i" / "train_prompts.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "i" / "train_instructions.jsonl").read_text().splitlines()]
    assert [p["key"] for p in prompts] == [r["id"] for r in rows]
    heldout = [json.loads(line) for line in (tmp_path / "i" / "heldout_ifeval.jsonl").read_text().splitlines()]
    assert len(heldout) == 3 and all(len(h["instruction_id_list"]) == len(h["kwargs"]) for h in heldout)
    assert main(["build-instructions", "--output", str(tmp_path / "i")]) == 2  # exists, no --overwrite


def test_dpo_best_worst_gives_one_pair_per_instruction(tmp_path):
    train, _, _ = synthesize(SynthesisSettings(num_train=4, num_heldout=0, min_constraints=3, max_constraints=3))
    (tmp_path / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    texts = ["plain answer here", '"<<T>> QUOTED ANSWER. P.S. YES"', "another plain answer, with a comma"]
    (tmp_path / "resp.jsonl").write_text(
        "".join(
            json.dumps({"key": r["id"], "response": t, "sample_id": i}) + "\n"
            for r in train
            for i, t in enumerate(texts)
        )
    )
    args = [
        "build-pairs",
        "--recipe",
        "dpo",
        "--input",
        str(tmp_path / "ins.jsonl"),
        "--responses",
        str(tmp_path / "resp.jsonl"),
        "--min-g",
        "1",
        "--dpo-pairing",
        "best_worst",
    ]
    assert main([*args, "--output", str(tmp_path / "bw")]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "bw" / "pairs.jsonl").read_text().splitlines()]
    assert len({p["group_id"] for p in pairs}) == len(pairs) <= len(train)
    for pair in pairs:
        best, worst = pair["provenance"]["scores"]
        assert best > worst
    assert main([*args[:-2], "--output", str(tmp_path / "all")]) == 0
    assert len((tmp_path / "all" / "pairs.jsonl").read_text().splitlines()) >= len(pairs)
