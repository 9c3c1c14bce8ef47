"""The shipped default pairs are exactly what their build script produces from shipped data, and hold no benchmark
prompt: they come from SmolLM2's own samples on synthesized instructions, never from IFEval or IFBench prompts."""

import gzip
import json
from pathlib import Path

import pytest

from data_pipeline.pairs.readers import read_pairs
from data_pipeline.pairs.synthesis import (
    BENCHMARK_PROMPTS,
    SynthesisSettings,
    benchmark_ngrams,
    synthesize,
    word_ngrams,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "data_pipeline" / "assets" / "default_pairs"
SOURCE = ROOT / "data_pipeline" / "assets" / "selfsampled_smollm2"


def shipped_pairs():
    return [*read_pairs(str(DEFAULT / "pairs.jsonl")), *read_pairs(str(DEFAULT / "eval_pairs.jsonl"))]


def read_gzip_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.slow
def test_rebuild_is_byte_identical(tmp_path):
    from data_pipeline.scripts.build_default_pairs import build

    assert build(tmp_path / "out") == 0
    for name in ("pairs.jsonl", "eval_pairs.jsonl", "stats.json"):
        assert (tmp_path / "out" / name).read_bytes() == (DEFAULT / name).read_bytes(), name


def test_shipped_instructions_are_the_experiments_small_preset():
    """The instructions behind the samples are what `build-instructions` makes with the small preset's settings,
    so the experiment's instructions stage and `sampling.responses_file` reproduce the same pairs."""
    train, _, _ = synthesize(SynthesisSettings(num_train=240, num_heldout=80))
    assert read_gzip_jsonl(SOURCE / "train_instructions.jsonl.gz") == json.loads(json.dumps(train))  # tuples: lists
    samples = read_gzip_jsonl(SOURCE / "samples.jsonl.gz")
    assert {s["key"] for s in samples} == {row["id"] for row in train}


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
    assert sum(stats["responses"]["by_outcome"].values()) == stats["responses"]["total"]
    assert stats["split"]["train"] + stats["split"]["eval"] == stats["emitted_records"]
    assert sum(stats["pairs_by_g"].values()) == stats["emitted_records"]


def test_train_and_eval_prompts_are_disjoint():
    train = {p.group_id for p in read_pairs(str(DEFAULT / "pairs.jsonl"))}
    held_out = {p.group_id for p in read_pairs(str(DEFAULT / "eval_pairs.jsonl"))}
    assert train and held_out and not train & held_out
