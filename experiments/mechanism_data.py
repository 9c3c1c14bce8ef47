"""The mechanism experiment's data (no JAX): training pairs of every arm from one set of controlled responses, and
the held-out scoring sets.

Training (one folder per noise rate): instructions and responses (`controlled_sets`, verdict vectors nested or
noisy), then, from those same responses,
  * `rpo`: RPO pairs, both directions of every response pair with g >= 1 (`build-pairs --recipe rpo --min-g 1`);
  * `dpo_best_worst`: the original instruction, best vs worst response (`--recipe dpo --dpo-pairing best_worst`);
  * `dpo_same_pairs`: the original instruction on every response pair RPO uses, more constraints met chosen, equal
    scores dropped (`--recipe dpo --dpo-pairing all --min-g 1`);
  * `iopo`: IOPO quadruples, the same response pairs (`--recipe iopo --min-g 1`);
  * `rpo_shuffled`: RPO's pairs with their prompts permuted among pairs (seeded): the labels no longer depend on
    the instruction, so a model trained on them can learn only what the responses alone say.
Each DPO arm's share of noisy pairs (the chosen response fails a constraint the rejected one meets) is counted from
the pairs' recorded verdicts.

Held-out (`validation` and `test`, held-out base tasks): each instruction's responses hold one fully compliant
response. `units.jsonl`: RPO pairs with their mirrors from those responses (every response pair, g >= 1);
`candidates.jsonl`: the responses under the original instruction, two per record, for best-of-N reranking;
`candidates_index.json` says which record row holds which response and whether it is the compliant one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from data_pipeline.pairs.build import BuildSettings, build_pairs
from data_pipeline.pairs.controlled_sets import is_noisy, write_split
from data_pipeline.pairs.instructions import Message
from data_pipeline.pairs.readers import read_pairs
from data_pipeline.pairs.schema import PairRecord, Sequence
from experiments.mechanism_config import MechanismData

RECIPES = {  # training set -> (recipe, dpo pairing)
    "rpo": ("rpo", "all"),
    "dpo_best_worst": ("dpo", "best_worst"),
    "dpo_same_pairs": ("dpo", "all"),
    "iopo": ("iopo", "all"),
}


def _build(folder: Path, inputs: dict, name: str, recipe: str, pairing: str) -> dict:
    return build_pairs(
        BuildSettings(
            recipe=recipe,
            input=inputs["instructions"],
            responses=inputs["responses"],
            output=str(folder / name),
            min_g=1,
            dpo_pairing=pairing,
            eval_fraction=0.0,
            seed=0,
            overwrite=True,
        )
    )


def write_jsonl(path: Path, records: list[PairRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def shuffled_prompts(records: list[PairRecord], seed: int) -> list[PairRecord]:
    """The same pairs with each pair's prompt taken from another pair (a seeded permutation)."""
    order = random.Random(seed).sample(range(len(records)), len(records))
    out = []
    for record, source in zip(records, order, strict=True):
        messages = records[source].sequences[0].messages
        sequences = tuple(Sequence(messages, s.response) for s in record.sequences)
        provenance = record.provenance | {"prompt_from": records[source].id}
        out.append(PairRecord.make(record.recipe, sequences, record.margin, record.group_id, provenance))
    return out


def noisy_share(records: list[PairRecord]) -> dict:
    """How many DPO pairs are noisy, from the verdicts their provenance records."""
    noisy = 0
    for r in records:
        chosen, rejected = (r.provenance[side]["verdicts"] for side in ("chosen", "rejected"))
        noisy += is_noisy([chosen[c] for c in sorted(chosen)], [rejected[c] for c in sorted(chosen)])
    return {"pairs": len(records), "noisy": noisy, "share": noisy / max(len(records), 1)}


def build_training(data: MechanismData, noise_rate: float, folder: Path) -> dict:
    """Every arm's training pairs for one noise rate, in `folder/<arm>/pairs.jsonl`; returns the statistics."""
    split = data.split("train", "train", data.train_instructions, data.train_responses, noise_rate)
    inputs = write_split(split, data.seed, "noise", folder)
    summary = {}
    for name, (recipe, pairing) in RECIPES.items():
        stats = _build(folder, inputs, name, recipe, pairing)
        summary[name] = {"pairs": stats["emitted_records"], "pairs_by_g": stats["pairs_by_g"]}
    for name in ("dpo_best_worst", "dpo_same_pairs"):
        summary[name]["noise"] = noisy_share(read_pairs(str(folder / name / "pairs.jsonl")))
    rpo = read_pairs(str(folder / "rpo" / "pairs.jsonl"))
    write_jsonl(folder / "rpo_shuffled" / "pairs.jsonl", shuffled_prompts(rpo, data.seed))
    summary["rpo_shuffled"] = {"pairs": len(rpo)}
    return summary


def candidate_records(folder: Path, inputs: dict) -> tuple[list[PairRecord], list[dict]]:
    """Each held-out instruction's responses under its original prompt, two per record (an odd one is paired with
    the first again), and where each response sits: {instruction, k, response, compliant, record, row}."""
    instructions = {}
    for line in Path(inputs["instructions"]).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        instructions[row["id"]] = row
    by_instruction: dict[str, list[dict]] = {}
    for line in Path(inputs["responses"]).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_instruction.setdefault(row["key"], []).append(row)
    records, index = [], []
    for key, responses in by_instruction.items():
        instruction = instructions[key]
        messages = tuple(Message(m["role"], m["content"]) for m in instruction["turns"])
        compliant = [all(r["planned_verdicts"]) for r in responses]
        texts = [r["response"] for r in responses]
        slots = list(range(len(texts))) + ([0] if len(texts) % 2 else [])
        for start in range(0, len(slots), 2):
            a, b = slots[start], slots[start + 1]
            sequences = (Sequence(messages, texts[a]), Sequence(messages, texts[b]))
            record_index = len(records)
            records.append(PairRecord.make("dpo", sequences, 0, key, {"instruction_id": key, "responses": [a, b]}))
            for row, response in ((0, a), (1, b)):
                if start + row < len(texts):
                    k = len(instruction["constraints"])
                    entry = {"instruction": key, "k": k, "response": response, "compliant": compliant[response]}
                    index.append(entry | {"record": record_index, "row": row})
    return records, index


def build_heldout(data: MechanismData, folder: Path) -> dict:
    """The validation and test sets: `<split>_units/pairs.jsonl` (RPO pairs and mirrors), `<split>_candidates/`
    (`pairs.jsonl` and `index.json`, best-of-N), with their instructions and responses."""
    summary = {}
    for label, count in (("validation", data.validation_instructions), ("test", data.test_instructions)):
        split = data.split("heldout", label, count, data.heldout_responses)
        inputs = write_split(split, data.seed, "heldout", folder)
        stats = _build(folder, inputs, f"{label}_units", "rpo", "all")
        records, index = candidate_records(folder, inputs)
        write_jsonl(folder / f"{label}_candidates" / "pairs.jsonl", records)
        (folder / f"{label}_candidates" / "index.json").write_text(json.dumps(index), encoding="utf-8")
        summary[label] = {"instructions": count, "unit_pairs": stats["emitted_records"], "candidates": len(index)}
    return summary
