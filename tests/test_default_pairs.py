"""The shipped default pairs are exactly what their build script produces from shipped data."""

import json
from pathlib import Path

import pytest

from data_pipeline.pairs.readers import read_pairs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "data_pipeline" / "assets" / "default_pairs"


@pytest.mark.slow
def test_rebuild_is_byte_identical(tmp_path):
    from data_pipeline.scripts.build_default_pairs import build

    assert build(tmp_path / "out") == 0
    for name in ("pairs.jsonl", "eval_pairs.jsonl", "stats.json"):
        assert (tmp_path / "out" / name).read_bytes() == (DEFAULT / name).read_bytes(), name


def test_stats_account_for_every_response():
    stats = json.loads((DEFAULT / "stats.json").read_text())
    assert sum(stats["responses"]["by_outcome"].values()) == stats["responses"]["total"]
    assert stats["split"]["train"] + stats["split"]["eval"] == stats["emitted_records"]
    assert sum(stats["pairs_by_g"].values()) == stats["emitted_records"]


def test_train_and_eval_prompts_are_disjoint():
    train = {p.group_id for p in read_pairs(str(DEFAULT / "pairs.jsonl"))}
    held_out = {p.group_id for p in read_pairs(str(DEFAULT / "eval_pairs.jsonl"))}
    assert train and held_out and not train & held_out
