"""Scoring a trained model of the mechanism experiment on a held-out split: per-item verdicts and their shares.

Every score is the policy's implicit reward h(x, y) = β·(log π(y|x) − log π_ref(y|x)) against the run's initial
model (its reference), read by `rpo_jax.train.evaluation.score_pair_rows`:
  * mirror units (`<split>_units`): the unit's contrast c = z_a + z_b (docs/algorithms.md §4); right when c > 0,
    half right on a tie; chance 0.5 for any model that cannot tell which instruction belongs to which response;
  * best-of-N (`<split>_candidates`): the instruction's N responses under its original prompt, ranked by h; right
    when the fully compliant one comes first (a tie at the top shares the credit), chance 1/N.
The verdicts are written one per line (`items.jsonl`) so that every interval can be recomputed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_pipeline.files import write_json_atomic
from data_pipeline.records.build import build_shards
from data_pipeline.records.shards import read_manifest
from data_pipeline.records.truncation import TruncationSettings
from rpo_jax.train.mirror_metrics import unit_contrasts

SETS = ("units", "candidates")
BATCH = 16


def tokenize_heldout(folder: Path, splits, tokenizer: str, max_length: int) -> dict:
    """Shards of every held-out set beside its pairs; no row may be dropped (items are matched by position)."""
    counts = {}
    for split in splits:
        for name in SETS:
            pairs = folder / f"{split}_{name}" / "pairs.jsonl"
            manifest = build_shards(pairs, tokenizer, pairs.parent / "shards", TruncationSettings(max_length, "drop"))
            lines = sum(1 for line in pairs.read_text(encoding="utf-8").splitlines() if line.strip())
            if manifest["counts"]["examples"] != lines:
                raise RuntimeError(f"{pairs}: {lines - manifest['counts']['examples']} rows longer than {max_length}")
            counts[f"{split}_{name}"] = lines
    return {"examples": counts}


def unit_items(pairs_file: Path, rewards: np.ndarray, units: list) -> list[dict]:
    records = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    contrast, both = unit_contrasts(rewards[:, 0] - rewards[:, 1], units)
    items = []
    for (a, _), c, both_right in zip(units, contrast, both, strict=True):
        record = records[a]
        items.append(
            {
                "kind": "unit",
                "instruction": record["group_id"],
                "k": len(record["provenance"]["prompt_constraints"]),
                "g": record["margin"],
                "contrast": float(c),
                "right": 1.0 if c > 0 else 0.5 if c == 0 else 0.0,
                "both_right": bool(both_right),
            }
        )
    return items


def best_of_n_items(index: list[dict], rewards: np.ndarray) -> list[dict]:
    by_instruction = defaultdict(list)
    for entry in index:
        by_instruction[entry["instruction"]].append(entry | {"h": float(rewards[entry["record"], entry["row"]])})
    items = []
    for key, entries in by_instruction.items():
        top = max(e["h"] for e in entries)
        leaders = [e for e in entries if e["h"] == top]
        right = sum(e["compliant"] for e in leaders) / len(leaders)
        n = len(entries)
        items.append({"kind": "best_of_n", "instruction": key, "k": entries[0]["k"], "n": n, "right": right})
    return items


def score_run(run_cfg, trained: Path, init: Path, heldout: Path, split: str, folder: Path) -> dict:
    """Items and summary of one trained model on one split (written to `folder/items.jsonl`, `summary.json`)."""
    from rpo_jax.train.evaluation import score_pair_rows

    shards = {name: heldout / f"{split}_{name}" / "shards" for name in SETS}
    units = read_manifest(shards["units"])["mirror_pairs"]
    unit_rewards = score_pair_rows(run_cfg, str(trained), str(init), str(shards["units"]), BATCH)
    items = unit_items(heldout / f"{split}_units" / "pairs.jsonl", unit_rewards, units)
    index = json.loads((heldout / f"{split}_candidates" / "index.json").read_text(encoding="utf-8"))
    items += best_of_n_items(index, score_pair_rows(run_cfg, str(trained), str(init), str(shards["candidates"]), BATCH))
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    summary = summarize(items)
    write_json_atomic(folder / "summary.json", summary)
    return summary


def summarize(items: list[dict]) -> dict:
    unit = [i for i in items if i["kind"] == "unit"]
    best = [i for i in items if i["kind"] == "best_of_n"]
    return {
        "mirror": {
            "accuracy": float(np.mean([i["right"] for i in unit])),
            "both_right": float(np.mean([i["both_right"] for i in unit])),
            "contrast": float(np.mean([i["contrast"] for i in unit])),
            "units": len(unit),
        },
        "best_of_n": {
            "accuracy": float(np.mean([i["right"] for i in best])),
            "chance": float(np.mean([1.0 / i["n"] for i in best])),
            "instructions": len(best),
        },
    }
