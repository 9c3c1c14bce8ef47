"""The experiment's held-out multi-turn suite (issue #28): the RPO paper's conversational setting, measured.

`instructions-multiturn` synthesizes held-out conversations (`multiturn` section: held-out base tasks and
follow-ups, constraints in a system prompt and added turn by turn, as `rpo-jax build-instructions --turns N
--system-constraints M` makes them). Each model answers them greedily turn by turn with `rpo-jax generate`'s
conversation prompts, its own earlier answers in context (`eval-multiturn-<model>`), and every turn's answer is
checked on the constraints stated so far (the system prompt's and turns 1..t's: Multi-IF's cumulative checks), with
IFEval's strict and loose rules. The report gives accuracy per turn (one unit per conversation) and per number K of
constraints checked at a turn (one unit per conversation turn; the turns of one conversation are correlated, so
these intervals are narrower than independent prompts would give).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from data_pipeline.constraints import scoring
from data_pipeline.constraints.prompt_files import InputRow
from data_pipeline.files import write_json_atomic, write_jsonl_atomic
from data_pipeline.pairs.synthesis import write_instructions
from data_pipeline.pairs.synthesis_conversations import checks_at_turn
from experiments.config import ExperimentConfig
from experiments.evaluation import accuracies, read_verdicts, verdict_arrays
from experiments.stages import Stage, StageStore
from experiments.stats import runs_interval

SUITE = "multiturn"


def multiturn_instructions_stage(store: StageStore, cfg: ExperimentConfig) -> Stage | None:
    """The held-out conversations (None when the section asks for none). Named after `instructions`, so
    `--stage instructions` makes both."""
    if not cfg.multiturn.conversations:
        return None
    settings = cfg.multiturn.synthesis()

    def build(folder: Path) -> dict:
        return write_instructions(settings, folder / "instructions", overwrite=True)

    return store.run("instructions-multiturn", dataclasses.asdict(cfg.multiturn), (), build)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def turn_verdicts(conversations: list[dict], responses_path: Path) -> list[dict]:
    """Strict and loose verdicts at every turn of every conversation that has a constraint to judge; a turn without
    an answer (a damaged responses file) fails all its checks."""
    answers = {row["key"]: row["responses"] for row in _read_jsonl(responses_path)}
    out = []
    for conversation in conversations:
        given = answers.get(conversation["id"], [])
        for turn in range(1, len(conversation["turns"]) + 1):
            checks = checks_at_turn(conversation, turn)
            if not checks:  # nothing stated yet to judge (Multi-IF skips such turns too)
                continue
            ids = [c["type"] for c in checks]
            row = InputRow(
                conversation["id"],
                conversation["turns"][turn - 1]["content"],
                tuple(ids),
                tuple(c["params"] for c in checks),
                0,
            )
            has_response = turn <= len(given)
            strict, loose = scoring.score_row(row, given[turn - 1]) if has_response else ([False] * len(ids),) * 2
            out.append(
                {
                    "key": conversation["id"],
                    "turn": turn,
                    "instruction_ids": ids,
                    "strict": list(strict),
                    "loose": list(loose),
                    "has_response": has_response,
                }
            )
    return out


def evaluate_multiturn(
    store: StageStore, cfg: ExperimentConfig, name: str, checkpoint: Stage, conversations: Stage, tokenizer_dir: Path
) -> Stage:
    """Greedy turn-by-turn answers of `checkpoint`'s model to the held-out conversations, scored at every turn."""
    from rpo_jax.generate.generation import GenerationSettings, generate_responses

    hf_dir = checkpoint.file(checkpoint.summary["hf_dir"])
    settings = GenerationSettings(
        temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size
    )

    def build(folder: Path) -> dict:
        rows = _read_jsonl(conversations.file("instructions/heldout_conversations.jsonl"))
        prompts = _read_jsonl(conversations.file("instructions/heldout_prompts.jsonl"))
        if cfg.eval.limit:
            rows, prompts = rows[: cfg.eval.limit], prompts[: cfg.eval.limit]
        write_jsonl_atomic(folder / f"{SUITE}_prompts.jsonl", prompts)
        responses = folder / f"{SUITE}_responses.jsonl"
        generation = generate_responses(
            str(hf_dir), tokenizer_dir, folder / f"{SUITE}_prompts.jsonl", responses, settings
        )
        verdicts = turn_verdicts(rows, responses)
        write_jsonl_atomic(folder / f"{SUITE}_verdicts.jsonl", verdicts)
        by_turn = {
            t: accuracies([v for v in verdicts if v["turn"] == t]) for t in sorted({v["turn"] for v in verdicts})
        }
        summary = {"by_turn": by_turn, "generation": generation}
        write_json_atomic(folder / f"{SUITE}_summary.json", summary)
        return summary

    return store.run(name, dataclasses.asdict(cfg.eval) | {"suite": SUITE}, (checkpoint, conversations), build)


def _intervals(runs: list[list[dict]], replicates: int, seed: int) -> dict:
    passed, counts = verdict_arrays(runs)
    return runs_interval(passed, counts, replicates=replicates, seed=seed) | {"num_prompts": len(counts)}


def multiturn_results(
    evals: dict[str, list[Stage]], k_buckets: tuple[tuple[int, int], ...], replicates: int, seed: int
) -> dict:
    """Strict accuracy with bootstrap intervals per turn and per bucket of K (constraints checked at a turn);
    `evals`: model -> its evaluations, one per training seed (intervals over seeds and units when several)."""
    verdicts = {name: [read_verdicts(stage, SUITE) for stage in runs] for name, runs in evals.items()}
    turns = sorted({v["turn"] for runs in verdicts.values() for rows in runs for v in rows})
    by_turn = {
        f"turn {t}": {
            name: _intervals([[v for v in rows if v["turn"] == t] for rows in runs], replicates, seed)
            for name, runs in verdicts.items()
        }
        for t in turns
    }
    by_k = {}
    for low, high in k_buckets:
        bucket = {
            name: [[v for v in rows if low <= len(v["strict"]) <= high] for rows in runs]
            for name, runs in verdicts.items()
        }
        by_k[f"{low}-{high}"] = {name: _intervals(runs, replicates, seed) for name, runs in bucket.items() if runs[0]}
    return {"by_turn": by_turn, "by_k": by_k}
