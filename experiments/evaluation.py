"""Evaluation stages: greedy responses of one model on each suite, scored per prompt (what the bootstrap needs).

Suites: `ifeval` (Google's 541 prompts), `ifbench` (AllenAI's prompts whose instruction ids the checkers support;
the others are left out and counted) and `heldout` (the held-out synthesized instructions, in IFEval format);
`validation` (synthesized like the held-out ones, never reported) chooses learning rates. Each
prompt's verdicts are written to `<suite>_verdicts.jsonl`: key, instruction ids, strict and loose per instruction.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from data_pipeline.constraints import scoring
from data_pipeline.files import write_json_atomic, write_jsonl_atomic
from experiments.config import ExperimentConfig
from experiments.stages import Stage, StageStore


def suite_prompts(suite: str, instructions: Stage, limit: int, folder: Path) -> tuple[Path, int]:
    """(the prompt file to generate for, prompts left out as unsupported); `limit` > 0 keeps the first N."""
    synthesized = suite in ("heldout", "validation")
    source = instructions.file(f"instructions/{suite}_ifeval.jsonl") if synthesized else scoring.SUITE_INPUTS[suite]
    kept, skipped, _ = scoring.split_unsupported(scoring.load_input_rows(source), source, True)
    lines = {row.line for row in (kept[:limit] if limit else kept)}
    rows = [
        line for number, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), 1) if number in lines
    ]
    path = folder / f"{suite}_prompts.jsonl"
    path.write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    return path, len(skipped)


def per_prompt_verdicts(input_path: Path, responses_path: Path) -> list[dict]:
    """Strict and loose verdicts of every prompt; a prompt without a response fails all its instructions (the
    generation stage writes one for every prompt, so this only guards against a damaged responses file)."""
    rows = scoring.load_input_rows(input_path)
    responses = scoring.load_responses(responses_path)
    matches = scoring.match_prompts(rows, responses)
    out = []
    for row in rows:
        if row.line in matches:
            strict, loose = scoring.score_row(row, responses[matches[row.line]][0])
        else:
            strict = loose = [False] * len(row.instruction_id_list)
        out.append(
            {
                "key": row.key,
                "instruction_ids": list(row.instruction_id_list),
                "strict": strict,
                "loose": loose,
                "has_response": row.line in matches,
            }
        )
    return out


def accuracies(verdicts: list[dict]) -> dict:
    prompts = len(verdicts)
    instructions = sum(len(v["strict"]) for v in verdicts)
    return {
        "prompt_level_strict_acc": sum(all(v["strict"]) for v in verdicts) / prompts,
        "prompt_level_loose_acc": sum(all(v["loose"]) for v in verdicts) / prompts,
        "inst_level_strict_acc": sum(sum(v["strict"]) for v in verdicts) / instructions,
        "inst_level_loose_acc": sum(sum(v["loose"]) for v in verdicts) / instructions,
        "num_prompts": prompts,
        "num_instructions": instructions,
        "num_without_response": sum(not v["has_response"] for v in verdicts),
    }


def evaluate_model(
    store: StageStore,
    cfg: ExperimentConfig,
    name: str,
    checkpoint: Stage,
    suites: tuple[str, ...],
    instructions: Stage,
    tokenizer_dir: Path | None = None,
) -> Stage:
    """Greedy responses of `checkpoint`'s model (its summary names its HF folder) on `suites`, scored. The model
    is loaded once, at the first suite not finished yet, and answers every suite after it."""
    from rpo_jax.generate import generation

    hf_dir = checkpoint.file(checkpoint.summary["hf_dir"])
    settings = generation.GenerationSettings(
        temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size
    )

    @functools.cache
    def loaded():
        return generation.load_for_sampling(str(hf_dir), tokenizer_dir or hf_dir)

    def build(folder: Path) -> dict:
        summary = {}
        for suite in suites:
            # A suite finished by an interrupted earlier attempt (its summary is written last, atomically) is kept:
            # the greedy responses of the same model and settings would be the same.
            done = folder / f"{suite}_summary.json"
            if done.is_file():
                summary[suite] = json.loads(done.read_text())
                continue
            prompts, unsupported = suite_prompts(suite, instructions, cfg.eval.limit, folder)
            responses = folder / f"{suite}_responses.jsonl"
            generated = generation.generate_with_model(loaded(), prompts, responses, settings)
            verdicts = per_prompt_verdicts(prompts, responses)
            write_jsonl_atomic(folder / f"{suite}_verdicts.jsonl", verdicts)
            summary[suite] = accuracies(verdicts) | {
                "prompts_left_out_unsupported": unsupported,
                "generation": generated,
            }
            write_json_atomic(done, summary[suite])
        return summary

    settings_dict = dataclasses.asdict(cfg.eval) | {"suites": list(suites)}
    return store.run(name, settings_dict, (checkpoint, instructions), build)


def read_verdicts(stage: Stage, suite: str) -> list[dict]:
    return [json.loads(line) for line in stage.file(f"{suite}_verdicts.jsonl").read_text().splitlines()]


def verdict_arrays(runs: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """(passed [runs, prompts], counts [prompts]) strict verdicts of one model's runs (one per seed) on the same
    prompts, in the same order."""
    if len({tuple(v["key"] for v in rows) for rows in runs}) != 1:
        raise RuntimeError("the runs were scored on different prompts; paired comparison impossible")
    passed = np.array([[sum(v["strict"]) for v in rows] for rows in runs])
    return passed, np.array([len(v["strict"]) for v in runs[0]])
