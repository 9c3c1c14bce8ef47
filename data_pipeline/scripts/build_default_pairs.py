"""Rebuilds `data_pipeline/assets/default_pairs/` — the RPO pairs of the embedded default run — from shipped data.

Response pool per IFEval prompt (filtered_input_data.jsonl):
  * SmolLM2-135M-Instruct's own samples (smollm2_ifeval_samples.jsonl, 4 per prompt for the first 110 prompts):
    the self-sampling step of RPO;
  * Google's GPT-4 response for every prompt plus deterministic edits of it (`data_pipeline.pairs.response_edits`),
    so that prompts have responses differing on several constraints.
Then `rpo-jax build-pairs --recipe rpo --min-g 1 --eval-fraction 0.1 --seed 0`. IFEval prompts carry 1–3
constraints (RPO's profiles carry 6–12), hence min_g 1 instead of the paper's 3.

Run from the repository root: `python data_pipeline/scripts/build_default_pairs.py`. Deterministic: a test
rebuilds into a temporary folder and compares bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from data_pipeline.files import ASSETS_DIR
from data_pipeline.pairs.build import BuildSettings, build_pairs
from data_pipeline.pairs.response_edits import response_edits

ASSETS = ASSETS_DIR
PROMPTS = ASSETS / "ifeval" / "filtered_input_data.jsonl"
GPT4 = ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"
SMOLLM2 = ASSETS / "smollm2_ifeval_samples.jsonl"
OUTPUT = ASSETS / "default_pairs"
POOL_DIR = ".default_pairs_pool"


def response_pool() -> list[dict]:
    keys = {json.loads(line)["prompt"]: json.loads(line)["key"] for line in PROMPTS.read_text().splitlines()}
    pool = []
    for line in SMOLLM2.read_text().splitlines():
        sample = json.loads(line)
        if sample["response"].strip():  # an empty sample is no answer at all; build-pairs rejects it
            pool.append(
                {"key": sample["key"], "sample_id": f"smollm2-{sample['sample_id']}", "response": sample["response"]}
            )
    for line in GPT4.read_text().splitlines():
        row = json.loads(line)
        if row["prompt"] in keys:  # one GPT-4 response has no prompt in the filtered file
            for name, text in response_edits(row["response"]).items():
                pool.append({"key": keys[row["prompt"]], "sample_id": f"gpt4-{name}", "response": text})
    return pool


def build(output: Path) -> int:
    """Builds into `output`. Provenance records input paths, so they are given relative to the repo root and
    the pool file always has the same name: the result does not depend on where the repo or temp dir live."""
    root = ASSETS.parents[1]
    output = Path(output).absolute()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        pool_dir = root / POOL_DIR
        os.rename(tmp, pool_dir)
        try:
            os.chdir(root)
            responses = Path(POOL_DIR) / "smollm2_samples+gpt4_edits.jsonl"
            responses.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in response_pool()))
            build_pairs(
                BuildSettings(
                    recipe="rpo",
                    input=str(PROMPTS.relative_to(root)),
                    responses=str(responses),
                    output=str(output),
                    min_g=1,
                    eval_fraction=0.1,
                    seed=0,
                    overwrite=True,
                )
            )
            return 0
        finally:
            os.chdir(cwd)
            shutil.rmtree(pool_dir, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory cleans up the (renamed-away) original


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
