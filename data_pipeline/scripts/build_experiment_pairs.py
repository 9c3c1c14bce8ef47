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
import shutil
import sys
import tempfile
from pathlib import Path

from data_pipeline.scripts.build_default_pairs import SOURCE, build_from_selfsampled

OUTPUT = SOURCE / "experiment_pairs"
MIN_G = {"dpo": 1, "rpo": 3, "iopo": 3}  # experiments.config.PairsSection: dpo_min_g, min_g
DPO_PAIRING = "best_worst"


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
