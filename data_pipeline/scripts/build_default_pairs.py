"""Rebuilds `data_pipeline/assets/default_pairs/` — the RPO pairs of the embedded default run — from code alone.

The embedded default must show, in minutes on a laptop, a model from scratch learning to read the instruction
(issue 29): on held-out instructions, mirror-unit accuracy well above chance (docs/algorithms.md §4). Sampled
responses cannot show that at this size (SmolLM2's own samples left the tiny model at chance), so the responses
here come from the controlled generator (`data_pipeline/pairs/controlled.py`): K = 1–4 verifiable constraints per
instruction whose satisfaction is visible in the text, 4 responses per instruction sharing one body, each meeting
an independently drawn subset of the constraints (as a sampler that meets each constraint half the time would),
features no constraint fixes drawn at random.

  * train: `TRAIN` instructions on the training base tasks (templates x topics of `instruction_tasks/`);
  * held-out: `HELD_OUT` instructions on the held-out templates and topics only (no task text in common);
  * pairs: `rpo-jax build-pairs --recipe rpo --min-g 1` on each (every pair with its mirror; the chosen
    response passes all K constraints of its own reversed prompt, re-checked at build time).
No base task shares an 8-gram of words with an IFEval or IFBench prompt (`controlled_sets.base_tasks`).

Run from anywhere: `python data_pipeline/scripts/build_default_pairs.py [OUTPUT]`. Deterministic: a test rebuilds
into a temporary folder and compares bytes. The generated instructions and responses are written next to the
pairs under `inputs/` (relative paths, so the pairs' provenance does not depend on where the repository lives).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from data_pipeline.files import ASSETS_DIR
from data_pipeline.pairs.build import BuildSettings, build_pairs
from data_pipeline.pairs.controlled import CONTROLLED_TYPES
from data_pipeline.pairs.controlled_sets import SplitSettings, write_split

OUTPUT = ASSETS_DIR / "default_pairs"
SEED = 0
# Not the case constraints: changing the case of a whole response re-tokenizes all of it, so its log-probability
# moves by far more than any other constraint's does, and a model this small spends 100 steps on that alone.
TYPES = tuple(t for t in CONTROLLED_TYPES if not t.startswith("change_case:"))
TRAIN = SplitSettings("train", "train", count=200, min_k=1, max_k=3, responses=4, types=TYPES)
HELD_OUT = SplitSettings("heldout", "heldout", count=40, min_k=1, max_k=3, responses=4, types=TYPES)
SPLITS = {"train": ("pairs.jsonl", TRAIN), "eval": ("eval_pairs.jsonl", HELD_OUT)}  # stats.json key -> file, split


def build(output: Path) -> int:
    """Writes `pairs.jsonl` (train), `eval_pairs.jsonl` (held-out), `stats.json` ({"train": ..., "eval": ...},
    each `build-pairs`' own stats) and `inputs/` into `output`."""
    output = Path(output).absolute()
    inputs = output / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    stats, cwd = {}, os.getcwd()
    try:
        os.chdir(output)
        for key, (name, split) in SPLITS.items():
            paths = write_split(split, SEED, "independent", Path("inputs"))
            built = Path(f"built_{split.label}")
            settings = BuildSettings(
                recipe="rpo",
                input=paths["instructions"],
                responses=paths["responses"],
                output=str(built),
                min_g=1,
                eval_fraction=0.0,
                seed=SEED,
                overwrite=True,
            )
            stats[key] = build_pairs(settings)
            (built / "pairs.jsonl").replace(name)
            shutil.rmtree(built)
    finally:
        os.chdir(cwd)
    (output / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
