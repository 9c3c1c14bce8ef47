"""Synthesized multi-constraint instructions (`rpo-jax build-instructions`): base tasks x verifiable constraints.

Base tasks come from `assets/instruction_tasks/`: task templates crossed with topics (written for this project)
and a hand-picked set of open-ended prompts from LLaMA-Factory's `dpo_en_demo` (Apache-2.0). Templates and topics
are split in two: held-out instructions use only held-out templates AND held-out topics, so their base tasks share
neither with training. Every base task is checked against the IFEval and IFBench prompts: one with an 8-gram of
words in common with any of them is dropped and counted (the build records the check).

Each instruction gets K constraints (K uniform in [min_constraints, max_constraints]) drawn from the IFEval checker
registry's reversible ids, with parameters from `PARAM_SAMPLERS`, never two that the registry lists as conflicting
(or two of one id). The prompt is the task followed by the numbered constraint sentences (IFEval's own wording), the
same format RPO uses for its reversed prompts (`pool.requirement_message`), so the original and reversed prompts of a
pair differ only in the constraints. With `turns` > 1 or `system_constraints` > 0 the constraints are spread over a
system prompt and several user turns instead (`synthesis_conversations`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from data_pipeline import constraints as cons
from data_pipeline.constraints.ifeval import conflicting_ids
from data_pipeline.errors import UserError
from data_pipeline.files import ASSETS_DIR
from data_pipeline.pairs.build import write_output_atomically
from data_pipeline.pairs.synthesis_conversations import (
    conversation_files,
    conversation_row,
    conversation_texts,
    requirements_text,
)

TASKS_DIR = ASSETS_DIR / "instruction_tasks"
BENCHMARK_PROMPTS = (ASSETS_DIR / "ifeval" / "input_data.jsonl", ASSETS_DIR / "ifbench" / "IFBench_test.jsonl")
OVERLAP_N = 8

KEYWORDS = (
    "community",
    "future",
    "balance",
    "energy",
    "history",
    "simple",
    "quality",
    "patience",
    "example",
    "journey",
    "habit",
    "budget",
    "planet",
    "curious",
    "practice",
    "season",
    "network",
    "garden",
    "careful",
    "progress",
)
FORBIDDEN = ("very", "really", "just", "actually", "basically", "thing", "stuff", "good", "important", "great")
END_PHRASES = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "That is all for now.",
    "Thank you for reading.",
)


def _relation(rng: random.Random) -> str:
    return rng.choice(("at least", "less than"))


# IFEval id -> parameters for it, in ranges a short answer (a few hundred tokens) can meet or miss either way.
PARAM_SAMPLERS: dict[str, Callable[[random.Random], dict]] = {
    "keywords:existence": lambda r: {"keywords": [r.choice(KEYWORDS)]},
    "keywords:frequency": lambda r: {
        "keyword": r.choice(KEYWORDS),
        "frequency": r.randint(2, 4),
        "relation": _relation(r),
    },
    "keywords:forbidden_words": lambda r: {"forbidden_words": [r.choice(FORBIDDEN)]},
    "keywords:letter_frequency": lambda r: {
        "letter": r.choice("abcdefghilmnoprstuwy"),
        "let_frequency": r.randint(3, 15),
        "let_relation": _relation(r),
    },
    "length_constraints:number_sentences": lambda r: {"num_sentences": r.randint(3, 12), "relation": _relation(r)},
    "length_constraints:number_paragraphs": lambda r: {"num_paragraphs": r.randint(2, 4)},
    "length_constraints:number_words": lambda r: {
        "num_words": r.choice((50, 80, 100, 150, 200, 300)),
        "relation": _relation(r),
    },
    "detectable_content:number_placeholders": lambda r: {"num_placeholders": r.randint(1, 3)},
    "detectable_content:postscript": lambda r: {"postscript_marker": r.choice(("P.S.", "P.P.S"))},
    "detectable_format:number_bullet_lists": lambda r: {"num_bullets": r.randint(2, 5)},
    "detectable_format:number_highlighted_sections": lambda r: {"num_highlights": r.randint(1, 3)},
    "detectable_format:multiple_sections": lambda r: {
        "section_spliter": r.choice(("Section", "SECTION", "Part")),
        "num_sections": r.randint(2, 4),
    },
    "detectable_format:title": lambda r: {},
    "detectable_format:json_format": lambda r: {},
    "detectable_format:constrained_response": lambda r: {},
    "startend:end_checker": lambda r: {"end_phrase": r.choice(END_PHRASES)},
    "startend:quotation": lambda r: {},
    "change_case:capital_word_frequency": lambda r: {
        "capital_frequency": r.randint(2, 10),
        "capital_relation": _relation(r),
    },
    "change_case:english_capital": lambda r: {},
    "change_case:english_lowercase": lambda r: {},
    "punctuation:no_comma": lambda r: {},
}


@dataclasses.dataclass(frozen=True)
class SynthesisSettings:
    num_train: int = 200
    num_heldout: int = 60
    min_constraints: int = 3
    max_constraints: int = 8
    heldout_min_constraints: int = 1
    heldout_max_constraints: int = 8
    seed: int = 0
    turns: int = 1  # user turns per instruction, its constraints spread over them (`synthesis_conversations`)
    system_constraints: int = 0  # of each instruction's K constraints (at most K - 1) stated in a system prompt

    @property
    def conversational(self) -> bool:
        """Instructions with a system prompt or several turns, answered turn by turn by the sampler."""
        return self.turns > 1 or self.system_constraints > 0

    def __post_init__(self):
        for low, high in (
            (self.min_constraints, self.max_constraints),
            (self.heldout_min_constraints, self.heldout_max_constraints),
        ):
            if not 1 <= low <= high <= len(PARAM_SAMPLERS):
                raise UserError(
                    f"constraints per instruction must satisfy 1 <= min <= max <= "
                    f"{len(PARAM_SAMPLERS)}, got {low}..{high}"
                )
        if self.num_train < 0 or self.num_heldout < 0:
            raise UserError("--num-train and --num-heldout must be >= 0")
        if self.turns < 1:
            raise UserError(f"--turns must be >= 1, got {self.turns}")
        if self.system_constraints < 0:
            raise UserError(f"--system-constraints must be >= 0, got {self.system_constraints}")


def word_ngrams(text: str, n: int = OVERLAP_N) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def benchmark_ngrams() -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for path in BENCHMARK_PROMPTS:
        for line in path.read_text(encoding="utf-8").splitlines():
            grams |= word_ngrams(json.loads(line)["prompt"])
    return grams


def base_tasks() -> dict[str, list[str]]:
    """split ("train" / "heldout") -> base task texts, in a fixed order."""
    spec = json.loads((TASKS_DIR / "tasks.json").read_text(encoding="utf-8"))
    tasks = {
        split: [t.format(topic=topic) for t in spec["templates"][split] for topic in spec["topics"][split]]
        for split in ("train", "heldout")
    }
    demo = [json.loads(line)["task"] for line in (TASKS_DIR / "dpo_en_demo_prompts.jsonl").read_text().splitlines()]
    tasks["train"] += demo
    return tasks


def sample_constraints(rng: random.Random, k: int) -> list[cons.Constraint]:
    """k constraints of different, pairwise non-conflicting reversible IFEval ids, in a random order."""
    conflicts = conflicting_ids()
    chosen: list[str] = []
    candidates = sorted(PARAM_SAMPLERS)
    while len(chosen) < k:
        allowed = [t for t in candidates if not any(t in conflicts.get(c, ()) or c == t for c in chosen)]
        if not allowed:
            chosen, candidates = [], sorted(PARAM_SAMPLERS)  # a dead end: start over (rare for k <= 8)
            continue
        chosen.append(rng.choice(allowed))
    return [cons.Constraint.make(t, **PARAM_SAMPLERS[t](rng)) for t in chosen]


def instruction_row(instruction_id: str, task: str, constraints: list[cons.Constraint]) -> dict:
    """A row of our instruction schema (`pairs.instructions.Instruction`)."""
    return {
        "id": instruction_id,
        "task": task,
        "turns": [{"role": "user", "content": requirements_text(task, constraints)}],
        "constraints": [
            {"id": f"c{i}", "type": c.type, "params": c.kwargs, "text": cons.render(c)}
            for i, c in enumerate(constraints)
        ],
    }


def synthesize(settings: SynthesisSettings) -> tuple[list[dict], list[dict], dict]:
    """(train rows, held-out rows, stats): instructions for both splits and the overlap check's record."""
    rng = random.Random(settings.seed)
    grams = benchmark_ngrams()
    tasks, overlapping, conversation = {}, {}, {}

    def overlaps(text: str) -> bool:
        return bool(word_ngrams(text) & grams)

    for split, texts in base_tasks().items():
        tasks[split] = [t for t in texts if not overlaps(t)]
        overlapping[split] = [t for t in texts if overlaps(t)]
        conversation[split], dropped = conversation_texts(TASKS_DIR / "tasks.json", split, overlaps)
        overlapping[split] += dropped
    rows, ks = {}, {}
    for split, count, low, high in (
        ("train", settings.num_train, settings.min_constraints, settings.max_constraints),
        ("heldout", settings.num_heldout, settings.heldout_min_constraints, settings.heldout_max_constraints),
    ):
        if count and not tasks[split]:
            raise UserError(f"no {split} base task left after the overlap check")
        order = rng.sample(tasks[split], len(tasks[split]))
        rows[split], ks[split] = [], {}
        for i in range(count):
            k, instruction_id = rng.randint(low, high), f"{split}-{i:05d}"
            ks[split][k] = ks[split].get(k, 0) + 1
            row = (instruction_id, order[i % len(order)], sample_constraints(rng, k))
            if settings.conversational:
                turns, in_system = settings.turns, settings.system_constraints
                rows[split].append(conversation_row(*row, turns, in_system, conversation[split], rng))
            else:
                rows[split].append(instruction_row(*row))
    stats = {
        "settings": dataclasses.asdict(settings),
        "base_tasks": {split: len(tasks[split]) for split in tasks},
        "instructions": {split: len(rows[split]) for split in rows},
        "constraints_per_instruction": {split: dict(sorted(ks[split].items())) for split in ks},
        "benchmark_overlap": {
            "n": OVERLAP_N,
            "benchmarks": [p.name for p in BENCHMARK_PROMPTS],
            "base_tasks_dropped": {split: overlapping[split] for split in overlapping},
        },
        "train_heldout_shared_base_tasks": len(set(tasks["train"]) & set(tasks["heldout"])),
    }
    return rows["train"], rows["heldout"], stats


def ifeval_row(row: dict) -> dict:
    """The same instruction as an IFEval-format row (`key`, `prompt`, `instruction_id_list`, `kwargs`), which the
    IFEval scorer reads."""
    return {
        "key": row["id"],
        "prompt": row["turns"][-1]["content"],
        "instruction_id_list": [c["type"] for c in row["constraints"]],
        "kwargs": [c["params"] for c in row["constraints"]],
    }


def write_instructions(settings: SynthesisSettings, output: str | Path, *, overwrite: bool = False) -> dict:
    """Synthesizes both splits and writes them as a new folder (built beside it, renamed when complete)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")
    train, heldout, stats = synthesize(settings)
    files = {"train_instructions.jsonl": train, "stats.json": stats}
    if settings.conversational:
        files |= conversation_files(train, heldout)
    else:
        files |= {
            "train_prompts.jsonl": [{"key": r["id"], "prompt": r["turns"][-1]["content"]} for r in train],
            "heldout_ifeval.jsonl": [ifeval_row(r) for r in heldout],
        }
    write_output_atomically(output, files)
    return stats
