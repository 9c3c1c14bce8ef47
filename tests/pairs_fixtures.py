"""Shared inputs of the pair-pipeline tests: real IFEval prompts with several responses each.

Responses: SmolLM2-135M-Instruct samples (4 per prompt, first 110 IFEval prompts) plus Google's GPT-4 response and
deterministic edits of it (truncated, comma-stripped, upper/lower-cased, quoted, with a P.S.) for every prompt. These
are test inputs only: the shipped training pairs contain no IFEval prompt (`data_pipeline/assets/default_pairs/`).
"""

from __future__ import annotations

import json
from pathlib import Path

from response_edits import response_edits

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"
IFEVAL_PROMPTS = ASSETS / "ifeval" / "filtered_input_data.jsonl"
GPT4_RESPONSES = ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"
SMOLLM2_SAMPLES = ASSETS / "smollm2_ifeval_samples.jsonl"
TRACE_SAMPLE = ASSETS / "trace" / "trace.json"
DPO_EN_DEMO = ASSETS / "prefs" / "dpo_en_demo-first50.json"
HH_SLICE = ASSETS / "prefs" / "hh-rlhf-harmless-base-test-slice.jsonl.gz"


def response_pool() -> list[dict]:
    """SmolLM2's samples and GPT-4's response with its edits, as response rows keyed by IFEval prompt key."""
    keys = {json.loads(line)["prompt"]: json.loads(line)["key"] for line in IFEVAL_PROMPTS.read_text().splitlines()}
    pool = []
    for line in SMOLLM2_SAMPLES.read_text().splitlines():
        sample = json.loads(line)
        if sample["response"].strip():  # an empty sample is no answer at all; build-pairs rejects it
            pool.append(
                {"key": sample["key"], "sample_id": f"smollm2-{sample['sample_id']}", "response": sample["response"]}
            )
    for line in GPT4_RESPONSES.read_text().splitlines():
        row = json.loads(line)
        if row["prompt"] in keys:  # one GPT-4 response has no prompt in the filtered file
            for name, text in response_edits(row["response"]).items():
                pool.append({"key": keys[row["prompt"]], "sample_id": f"gpt4-{name}", "response": text})
    return pool


def ifeval_instructions(min_constraints: int, limit: int) -> list[dict]:
    """The first `limit` IFEval rows with at least `min_constraints` instruction ids."""
    rows = [json.loads(line) for line in IFEVAL_PROMPTS.read_text().splitlines()]
    return [r for r in rows if len(r["instruction_id_list"]) >= min_constraints][:limit]


def write_ifeval_pool(tmp: Path, min_constraints: int = 3, limit: int = 40) -> tuple[Path, Path, int]:
    """(instructions file, responses file, number of response rows) for a slice of IFEval."""
    rows = ifeval_instructions(min_constraints, limit)
    instructions = tmp / "instructions.jsonl"
    instructions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = {r["key"] for r in rows}
    # SmolLM2's own samples plus GPT-4 responses and their edits (several per prompt that differ on several
    # constraints; the samples alone rarely differ on 3).
    lines = [json.dumps(r) for r in response_pool() if r["key"] in keys]
    responses = tmp / "responses.jsonl"
    responses.write_text("".join(line + "\n" for line in lines))
    return instructions, responses, len(lines)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
