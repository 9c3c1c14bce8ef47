"""Synthesized conversations (`rpo-jax build-instructions --turns N --system-constraints M`): the RPO paper's setting.

An instruction's K constraints are spread over a system prompt and N user turns: the first M go to the system
prompt (a profile from `assets/instruction_tasks/tasks.json`, as the paper's system profiles; K - 1 of them when
K <= M), the others over the turns, as evenly as possible with the later turns taking the extra ones, so the final
turn always states at least one (and final-turn prompts differ, for evaluations that match answers by prompt).
Turn 1 is the base task; turns 2..N are follow-up requests of the same split. Every message states its constraints
as `"{text}\n\nRequirements:\n1. ..."` and keeps its text apart as its task, so RPO rewrites each cleanly.

Constraints add up over the turns, as in Multi-IF: the checks at turn t are the system prompt's and turns 1..t's.
The conversation's final answer is the scored one (`data_pipeline.pairs.instructions.Instruction`); its earlier
answers come from the sampler, turn by turn (`rpo-jax generate` on the `conversation_prompt` rows).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_pipeline import constraints as cons
from data_pipeline.errors import UserError
from data_pipeline.pairs.constraint_specs import SYSTEM, Location
from data_pipeline.pairs.pool import TASK_HEADER


@dataclass(frozen=True)
class ConversationTexts:
    """One split's texts for conversations: follow-up requests (turns 2..N) and system profiles."""

    follow_ups: tuple[str, ...]
    profiles: tuple[str, ...]


def conversation_texts(
    tasks_file: Path, split: str, overlaps: Callable[[str], bool]
) -> tuple[ConversationTexts, list[str]]:
    """(one split's texts, those left out because `overlaps` says they share words with a benchmark prompt)."""
    spec = json.loads(tasks_file.read_text(encoding="utf-8"))
    given = (spec["follow_ups"][split], spec["profiles"][split])
    kept = ConversationTexts(*(tuple(t for t in texts if not overlaps(t)) for texts in given))
    return kept, [t for texts in given for t in texts if overlaps(t)]


def requirements_text(task: str, constraints: Sequence[cons.Constraint]) -> str:
    """A message stating `constraints` after its task (the format of RPO's rewritten messages), or the task alone."""
    if not constraints:
        return task
    numbered = "\n".join(f"{i}. {cons.render(c)}" for i, c in enumerate(constraints, start=1))
    return f"{task}\n\n{TASK_HEADER}\n{numbered}"


def spread(k: int, system_constraints: int, turns: int) -> list[Location]:
    """Where each of k constraints is stated: `system_constraints` (at most k - 1) in the system prompt, the rest over
    the turns."""
    system_constraints = min(system_constraints, k - 1)
    in_turns = k - system_constraints
    base, extra = divmod(in_turns, turns)
    per_turn = [base + (turn > turns - extra) for turn in range(1, turns + 1)]
    return [SYSTEM] * system_constraints + [turn for turn in range(1, turns + 1) for _ in range(per_turn[turn - 1])]


def conversation_row(
    instruction_id: str,
    task: str,
    constraints: list[cons.Constraint],
    turns: int,
    system_constraints: int,
    texts: ConversationTexts,
    rng: random.Random,
) -> dict:
    """A row of our instruction schema whose user turns await the sampler's answers (no assistant turns)."""
    if turns - 1 > len(texts.follow_ups):
        raise UserError(f"--turns {turns}: the task pool has {len(texts.follow_ups)} follow-up requests per split")
    locations = spread(len(constraints), system_constraints, turns)

    def stated_at(location: Location) -> list[cons.Constraint]:
        return [c for c, where in zip(constraints, locations, strict=True) if where == location]

    tasks = [task, *rng.sample(texts.follow_ups, turns - 1)]
    row: dict = {"id": instruction_id}
    if system_constraints:
        profile = rng.choice(texts.profiles)
        row |= {"system": requirements_text(profile, stated_at(SYSTEM)), "system_task": profile}
    row["turns"] = [
        {"role": "user", "content": requirements_text(text, stated_at(t)), "task": text}
        for t, text in enumerate(tasks, start=1)
    ]
    row["constraints"] = [
        {"id": f"c{i}", "type": c.type, "params": c.kwargs, "text": cons.render(c), "stated_in": where}
        for i, (c, where) in enumerate(zip(constraints, locations, strict=True))
    ]
    return row


def conversation_files(train: list[dict], heldout: list[dict]) -> dict[str, list[dict]]:
    """The files of a conversational build beyond the training instructions: the prompts the sampler answers turn
    by turn, the held-out conversations in our schema and in `rpo-jax eval`'s system-and-turns layout."""
    return {
        "train_prompts.jsonl": [conversation_prompt(r) for r in train],
        "heldout_conversations.jsonl": heldout,
        "heldout_prompts.jsonl": [conversation_prompt(r) for r in heldout],
        "heldout_multiturn.jsonl": [multiturn_eval_row(r) for r in heldout],
    }


def multiturn_eval_row(row: dict) -> dict:
    """The conversation as `rpo-jax eval --prompts` reads one (system-and-turns layout): the system prompt's
    constraints are judged at every turn, and turn k lists those stated in turns 1..k (the cumulative checks)."""

    def ids_and_kwargs(constraints: list[dict]) -> tuple[list[str], list[dict]]:
        return [c["type"] for c in constraints], [c["params"] for c in constraints]

    out: dict = {"key": row["id"]}
    if "system" in row:
        ids, kwargs = ids_and_kwargs([c for c in row["constraints"] if c["stated_in"] == SYSTEM])
        out |= {"system": row["system"], "system_instruction_id_list": ids, "system_kwargs": kwargs}
    out["turns"] = []
    for k, turn in enumerate(row["turns"], start=1):
        ids, kwargs = ids_and_kwargs([c for c in checks_at_turn(row, k) if c["stated_in"] != SYSTEM])
        out["turns"].append({"prompt": turn["content"], "instruction_id_list": ids, "kwargs": kwargs})
    return out


def conversation_prompt(row: dict) -> dict:
    """The row as `rpo-jax generate` reads a conversation: `key`, `system` (if any) and `user_turns`, answered in
    order with the model's own earlier answers in context."""
    system = {"system": row["system"]} if "system" in row else {}
    return {"key": row["id"], **system, "user_turns": [turn["content"] for turn in row["turns"]]}


def checks_at_turn(row: dict, turn: int) -> list[dict]:
    """The constraints checked at user turn `turn` of a conversation row: the system prompt's and those of turns
    1..turn (Multi-IF's cumulative checks)."""
    return [c for c in row["constraints"] if c.get("stated_in", len(row["turns"])) in (SYSTEM, *range(1, turn + 1))]
