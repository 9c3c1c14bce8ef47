"""Rebuilds `data_pipeline/assets/selfsampled_smollm2/experiment_pairs/` — the pairs the RPO-vs-DPO experiment's
small preset trains on (`configs/experiment/smollm2_rpo_vs_dpo.yaml`, its `pairs` stage) — from the committed
instructions and samples, so the training can be rerun (or inspected) without resampling.

Settings are the experiment's defaults (`experiments.config.PairsSection`, checked by a test): RPO and IOPO keep
pairs with g >= 3 as in the paper; the DPO baseline pairs the sample satisfying the most constraints with the one
satisfying the fewest on the original instruction (`--dpo-pairing best_worst`, ties dropped); 10% of instructions
held out, seed 0. Each recipe's `pairs.jsonl`, `eval_pairs.jsonl` are written gzip-compressed (`gzip -9n`: no name
or time in the header, so the bytes are reproducible) next to its uncompressed `stats.json`.

Run from anywhere: `python data_pipeline/scripts/build_experiment_pairs.py [OUTPUT]`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

from data_pipeline.files import ASSETS_DIR
from data_pipeline.pairs.build import BuildSettings, build_pairs

SOURCE = ASSETS_DIR / "selfsampled_smollm2"
INSTRUCTIONS = SOURCE / "train_instructions.jsonl.gz"
SAMPLES = SOURCE / "samples.jsonl.gz"

OUTPUT = SOURCE / "experiment_pairs"
MIN_G = {"dpo": 1, "rpo": 3, "iopo": 3}  # experiments.config.PairsSection: dpo_min_g, min_g
DPO_PAIRING = "best_worst"


def build_from_selfsampled(output: Path, recipe: str, min_g: int, dpo_pairing: str = "all") -> dict:
    """`build-pairs` on the committed instructions and samples into `output` (held out: 10%, seed 0); returns its
    stats. The stats and each pair's provenance record input paths, so they are given relative to the repository
    root: the result does not depend on where the repository lives."""
    root = ASSETS_DIR.parents[1]
    output = Path(output).absolute()
    cwd = os.getcwd()
    try:
        os.chdir(root)
        return build_pairs(
            BuildSettings(
                recipe=recipe,
                input=str(INSTRUCTIONS.relative_to(root)),
                responses=str(SAMPLES.relative_to(root)),
                output=str(output),
                min_g=min_g,
                dpo_pairing=dpo_pairing if recipe == "dpo" else "all",
                eval_fraction=0.1,
                seed=0,
                overwrite=True,
            )
        )
    finally:
        os.chdir(cwd)


def build(output: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, min_g in MIN_G.items():
            built = Path(tmp) / recipe
            build_from_selfsampled(built, recipe, min_g, DPO_PAIRING)
            target = Path(output) / recipe
            target.mkdir(parents=True, exist_ok=True)
            for name in ("pairs.jsonl", "eval_pairs.jsonl"):
                with (built / name).open("rb") as src, (target / f"{name}.gz").open("wb") as raw:
                    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as dst:
                        shutil.copyfileobj(src, dst)
            shutil.copyfile(built / "stats.json", target / "stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
