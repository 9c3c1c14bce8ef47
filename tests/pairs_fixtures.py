"""Shared inputs of the pair-pipeline tests: real IFEval prompts with several responses each.

When `data_pipeline/assets/smollm2_ifeval_samples.jsonl` (SmolLM2 samples, several per IFEval prompt) exists it is
used; otherwise Google's GPT-4 IFEval responses plus deterministic edits of each (truncated, comma-stripped,
upper/lower-cased, quoted, with a P.S.), so that each prompt has responses that differ on several constraints.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "data_pipeline" / "assets"
IFEVAL_PROMPTS = ASSETS / "ifeval" / "filtered_input_data.jsonl"
GPT4_RESPONSES = ASSETS / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"
SMOLLM2_SAMPLES = ASSETS / "smollm2_ifeval_samples.jsonl"
TRACE_SAMPLE = ASSETS / "trace" / "trace.json"
DPO_EN_DEMO = ASSETS / "prefs" / "dpo_en_demo-first50.json"
HH_SLICE = ASSETS / "prefs" / "hh-rlhf-harmless-base-test-slice.jsonl.gz"


def _edits(text: str) -> dict[str, str]:
    words = text.split()
    no_comma = text.replace(",", "")
    return {
        "orig": text,
        "trunc": " ".join(words[: max(1, len(words) // 4)]),
        "nocomma": no_comma,
        "upper": text.upper(),
        "lower": text.lower(),
        "quoted_nocomma": f'"{no_comma}"',
        "ps": text + "\n\nP.S. Thanks for reading, friend.",
        "trunc_upper_ps": " ".join(words[: max(1, len(words) // 4)]).upper() + "\n\nP.S. BYE",
    }


def ifeval_instructions(min_constraints: int, limit: int) -> list[dict]:
    """The first `limit` IFEval rows with at least `min_constraints` instruction ids."""
    rows = [json.loads(line) for line in IFEVAL_PROMPTS.read_text().splitlines()]
    return [r for r in rows if len(r["instruction_id_list"]) >= min_constraints][:limit]


def write_ifeval_pool(tmp: Path, min_constraints: int = 3, limit: int = 40) -> tuple[Path, Path, int]:
    """(instructions file, responses file, number of response rows) for a slice of IFEval."""
    rows = ifeval_instructions(min_constraints, limit)
    instructions = tmp / "instructions.jsonl"
    instructions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = {r["prompt"]: r["key"] for r in rows}
    lines = []
    if SMOLLM2_SAMPLES.is_file():
        keys = set(prompts.values())
        for line in SMOLLM2_SAMPLES.read_text().splitlines():
            sample = json.loads(line)
            # Empty samples are bad input by design (build-pairs would stop on them).
            if sample["key"] in keys and sample["response"].strip():
                lines.append(json.dumps(sample))
    else:
        for line in GPT4_RESPONSES.read_text().splitlines():
            row = json.loads(line)
            if row["prompt"] not in prompts:
                continue
            for name, text in _edits(row["response"]).items():
                lines.append(json.dumps({"key": prompts[row["prompt"]], "sample_id": name, "response": text}))
    responses = tmp / "responses.jsonl"
    responses.write_text("".join(line + "\n" for line in lines))
    return instructions, responses, len(lines)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
