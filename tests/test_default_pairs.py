"""The shipped default pairs are exactly what their build script produces, and hold no benchmark prompt: synthesized
instructions with controlled responses, never IFEval or IFBench prompts; held-out instructions share no base task
with the training ones."""

import json
from pathlib import Path

from data_pipeline.pairs.readers import read_pairs
from data_pipeline.pairs.synthesis import BENCHMARK_PROMPTS, benchmark_ngrams, word_ngrams

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "data_pipeline" / "assets" / "default_pairs"


def shipped_pairs():
    return [*read_pairs(str(DEFAULT / "pairs.jsonl")), *read_pairs(str(DEFAULT / "eval_pairs.jsonl"))]


def test_rebuild_is_byte_identical(tmp_path):
    from data_pipeline.scripts.build_default_pairs import build

    assert build(tmp_path / "out") == 0
    names = ["pairs.jsonl", "eval_pairs.jsonl", "stats.json"]
    names += [f"inputs/{p.name}" for p in sorted((DEFAULT / "inputs").iterdir())]
    assert sorted((tmp_path / "out" / "inputs").iterdir()) and len(names) == 7
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (DEFAULT / name).read_bytes(), name


def test_no_benchmark_prompt_in_the_shipped_pairs():
    """No pair's task text shares an 8-gram of words with an IFEval or IFBench prompt, and no benchmark prompt
    appears whole in a pair (constraint sentences may reuse the checkers' wording; the tasks may not)."""
    grams = benchmark_ngrams()
    benchmark = [json.loads(line)["prompt"] for path in BENCHMARK_PROMPTS for line in path.read_text().splitlines()]
    pairs = shipped_pairs()
    assert len(pairs) > 100
    for pair in pairs:
        prompt = pair.sequences[0].messages[-1].content
        task = prompt.split("\n\n")[0]
        assert not word_ngrams(task) & grams, (pair.id, task)
        assert not any(text in prompt for text in benchmark), pair.id


def test_stats_account_for_every_response():
    stats = json.loads((DEFAULT / "stats.json").read_text())
    for split, name in (("train", "pairs.jsonl"), ("eval", "eval_pairs.jsonl")):
        part = stats[split]
        assert sum(part["responses"]["by_outcome"].values()) == part["responses"]["total"]
        assert part["split"] == {"train": part["emitted_records"], "eval": 0}
        assert sum(part["pairs_by_g"].values()) == part["emitted_records"] == len(read_pairs(str(DEFAULT / name)))


def test_held_out_instructions_share_no_base_task_with_training():
    """Held-out pairs come from the held-out templates and topics: not one base task (the request before the
    constraints) of a held-out pair appears in training, so held-out accuracy is about unseen instructions."""

    def tasks(name):
        return {p.sequences[0].messages[-1].content.split("\n\n")[0] for p in read_pairs(str(DEFAULT / name))}

    train, held_out = tasks("pairs.jsonl"), tasks("eval_pairs.jsonl")
    assert len(train) > 50 and len(held_out) > 10 and not train & held_out
