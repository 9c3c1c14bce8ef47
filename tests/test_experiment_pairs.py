"""The experiment's committed pairs (`data_pipeline/assets/selfsampled_smollm2/experiment_pairs/`) are exactly what
their build script makes from the committed instructions and samples, with the settings of the experiment's `pairs`
stage, and the same pairs as that stage builds (up to the input paths each pair's provenance records)."""

import gzip
import json
from pathlib import Path

from data_pipeline.scripts import build_experiment_pairs as script

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = script.OUTPUT
SOURCE = script.SOURCE


def without_paths(text: str, *paths: Path | str) -> str:
    for i, path in enumerate(paths):
        text = text.replace(str(path), f"<input {i}>")
    return text


def test_the_experiments_pairs_stage_builds_the_same_pairs(tmp_path):
    """`experiments.runner.pairs_stage` with the small preset's settings, on the committed inputs."""
    from experiments.config import ExperimentConfig
    from experiments.runner import pairs_stage
    from experiments.stages import Stage, StageStore
    from rpo_jax.config.loading import load_config

    cfg = load_config(ROOT / "configs/experiment/smollm2_rpo_vs_dpo.yaml", [], ExperimentConfig)
    instructions = tmp_path / "instructions" / "instructions" / "train_instructions.jsonl"
    samples = tmp_path / "samples" / "samples.jsonl"
    for source, target in (
        (SOURCE / "train_instructions.jsonl.gz", instructions),
        (SOURCE / "samples.jsonl.gz", samples),
    ):
        target.parent.mkdir(parents=True)
        with gzip.open(source, "rb") as handle:
            target.write_bytes(handle.read())
    stages = [Stage(name, name, tmp_path / name, {}, 0.0, cached=True) for name in ("instructions", "samples")]
    built = pairs_stage(StageStore(tmp_path / "stages"), cfg, *stages)
    committed = (
        (SOURCE / "train_instructions.jsonl.gz").relative_to(ROOT),
        (SOURCE / "samples.jsonl.gz").relative_to(ROOT),
    )
    for recipe in script.MIN_G:
        for name in ("pairs.jsonl", "eval_pairs.jsonl"):
            with gzip.open(COMMITTED / recipe / f"{name}.gz", "rt", encoding="utf-8") as handle:
                expected = without_paths(handle.read(), *committed)
            got = without_paths(built.file(recipe).joinpath(name).read_text(encoding="utf-8"), instructions, samples)
            assert got == expected, (recipe, name)


def test_rebuild_is_byte_identical(tmp_path):
    assert script.build(tmp_path) == 0
    for recipe in script.MIN_G:
        for name in ("pairs.jsonl.gz", "eval_pairs.jsonl.gz", "stats.json"):
            assert (tmp_path / recipe / name).read_bytes() == (COMMITTED / recipe / name).read_bytes(), (recipe, name)


def test_each_pair_cites_the_committed_files():
    stats = json.loads((COMMITTED / "rpo" / "stats.json").read_text())
    assert stats["split"] == {"train": 250, "eval": 24} and stats["pairs_by_g"] == {"3": 216, "4": 54, "5": 2, "6": 2}
    with gzip.open(COMMITTED / "rpo" / "pairs.jsonl.gz", "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert ROOT / first["provenance"]["source"] == SOURCE / "train_instructions.jsonl.gz"
