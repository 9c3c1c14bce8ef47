"""Rebuilds `data_pipeline/assets/default_pairs/` — the RPO pairs of the embedded default run — from shipped data.

Inputs (`data_pipeline/assets/selfsampled_smollm2/`, provenance in its README), both from the small preset of the
RPO-vs-DPO experiment (`configs/experiment/smollm2_rpo_vs_dpo.yaml`):
  * `train_instructions.jsonl.gz`: synthesized multi-constraint instructions (`rpo-jax build-instructions`: base
    tasks from the repo's own pool, 3–8 verifiable constraints each; no 8-gram of task text shared with any IFEval
    or IFBench prompt);
  * `samples.jsonl.gz`: SmolLM2-135M-Instruct's own samples on them (the experiment's samples stage): RPO's
    self-sampling step.
Then `rpo-jax build-pairs --recipe rpo --min-g 1 --eval-fraction 0.1 --seed 0`. The experiment keeps the paper's
g >= 3 (274 pairs from these samples); the embedded default keeps every g >= 1 (about 5x more pairs) because it trains
a model from scratch, for which the number of pairs matters more than their margin.

Run from anywhere: `python data_pipeline/scripts/build_default_pairs.py [OUTPUT]`. Deterministic: a test rebuilds
into a temporary folder and compares bytes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from data_pipeline.files import ASSETS_DIR
from data_pipeline.pairs.build import BuildSettings, build_pairs

SOURCE = ASSETS_DIR / "selfsampled_smollm2"
INSTRUCTIONS = SOURCE / "train_instructions.jsonl.gz"
SAMPLES = SOURCE / "samples.jsonl.gz"
OUTPUT = ASSETS_DIR / "default_pairs"
MIN_G = 1


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
    build_from_selfsampled(output, "rpo", MIN_G)
    return 0


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
