"""Instructions and controlled responses for a whole data set (the embedded default's pairs, the mechanism experiment).

Instructions: a base task (a template of `assets/instruction_tasks/tasks.json` with a topic; held-out instructions
use held-out templates and topics only) and K constraints of `controlled.CONTROLLED_TYPES`; a base task sharing an
8-gram of words with an IFEval or IFBench prompt is left out (none does). Responses: `controlled.controlled_response`
on verdict vectors drawn per instruction (`verdict_vectors`), all of one instruction with one shared body.

Noise. The DPO baseline pairs a best response with a worst one under the original instruction; such a pair is
*noisy* when the chosen response fails a constraint that the rejected one meets (it teaches the wrong direction on
that constraint). `noise_rate` is the share of training instructions whose vectors are drawn so that their
best-vs-worst pair is noisy (possible from K = 3 on: at K <= 2 every best-worst pair with different scores is
nested); the other instructions get nested vectors (a chain: each response meets a subset of what the next one
meets), so that no DPO pair drawn from them is noisy, best-vs-worst or any other. RPO's pairs are noise-free either
way: each response is a perfect answer to its own rewritten instruction.

Held-out instructions get one fully compliant response and others that are not, drawn at random (`heldout_vectors`):
best-of-N reranking asks whether the compliant one comes first.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.pairs.controlled import CONTROLLED_TYPES, controlled_response, sample_constraints
from data_pipeline.pairs.synthesis import TASKS_DIR, benchmark_ngrams, instruction_row, word_ngrams

MAX_DRAWS = 1000  # rejection-sampling draws of one instruction's verdict vectors


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    """One split: `count` instructions with K uniform in [min_k, max_k], `responses` each."""

    name: str  # "train" or "heldout" base tasks; the instruction ids are prefixed with `label`
    label: str
    count: int
    min_k: int
    max_k: int
    responses: int
    noise_rate: float = 0.0  # train: share of instructions with a noisy best-vs-worst pair (K >= 3)
    types: tuple[str, ...] = CONTROLLED_TYPES  # the constraint ids instructions draw from

    def __post_init__(self):
        if self.name not in ("train", "heldout"):
            raise UserError(f"split {self.label}: base tasks are 'train' or 'heldout', got {self.name!r}")
        if not 1 <= self.min_k <= self.max_k <= 6:
            raise UserError(f"split {self.label}: constraints per instruction must be 1 <= min <= max <= 6")
        if self.responses < 2:
            raise UserError(f"split {self.label}: pairs need at least 2 responses per instruction")
        unknown = sorted(set(self.types) - set(CONTROLLED_TYPES))
        if unknown or len(self.types) < self.max_k:
            raise UserError(f"split {self.label}: types must be >= max_k of {list(CONTROLLED_TYPES)}, got {unknown}")
        if not 0.0 <= self.noise_rate <= 1.0:
            raise UserError(f"split {self.label}: noise_rate must be in [0, 1], got {self.noise_rate}")


def base_tasks(split: str) -> list[tuple[str, str]]:
    """(task, topic) for every template x topic of the split that shares no 8-gram with IFEval or IFBench."""
    spec = json.loads((TASKS_DIR / "tasks.json").read_text(encoding="utf-8"))
    grams = benchmark_ngrams()
    tasks = [(t.format(topic=p), p) for t in spec["templates"][split] for p in spec["topics"][split]]
    return [(task, topic) for task, topic in tasks if not word_ngrams(task) & grams]


def is_noisy(best: Sequence[bool], worst: Sequence[bool]) -> bool:
    """The chosen (best) response fails a constraint that the rejected (worst) one meets."""
    return any(w and not b for b, w in zip(best, worst, strict=True))


def best_worst(vectors: Sequence[tuple[bool, ...]]) -> tuple[int, int]:
    """The DPO baseline's pick (`pairs.dpo`, best_worst): the first best and the last worst by score."""
    scores = [sum(v) for v in vectors]
    return scores.index(max(scores)), len(scores) - 1 - scores[::-1].index(min(scores))


def verdict_vectors(k: int, n: int, noisy: bool, rng: random.Random) -> list[tuple[bool, ...]]:
    """n distinct verdict vectors (at most 2^k). Nested (a chain of subsets), or, when `noisy` (k >= 3),
    independent fair coins redrawn until the best-vs-worst pair is noisy with different scores."""
    n = min(n, 2**k)
    if not noisy or k < 3:
        order = rng.sample(range(k), k)
        counts = rng.sample(range(k + 1), min(n, k + 1))
        return [tuple(i in order[:c] for i in range(k)) for c in counts]
    for _ in range(MAX_DRAWS):
        vectors = list(dict.fromkeys(tuple(rng.random() < 0.5 for _ in range(k)) for _ in range(n)))
        best, worst = best_worst(vectors)
        if len(vectors) == n and sum(vectors[best]) > sum(vectors[worst]) and is_noisy(vectors[best], vectors[worst]):
            return vectors
    raise RuntimeError(f"no noisy draw of {n} vectors over {k} constraints")


def independent_vectors(k: int, n: int, rng: random.Random) -> list[tuple[bool, ...]]:
    """n distinct fair-coin verdict vectors (at most 2^k), as a sampler that meets each constraint half the time."""
    n, vectors = min(n, 2**k), []
    while len(vectors) < n:
        v = tuple(rng.random() < 0.5 for _ in range(k))
        if v not in vectors:
            vectors.append(v)
    return vectors


def heldout_vectors(k: int, n: int, rng: random.Random) -> list[tuple[bool, ...]]:
    """The fully compliant vector and n - 1 distinct others (at most 2^k in all), in a random order."""
    others = [v for v in independent_vectors(k, 2**k, rng) if not all(v)][: n - 1]
    vectors = [(True,) * k, *others]
    rng.shuffle(vectors)
    return vectors


def build_split(split: SplitSettings, seed: int, vectors: str) -> tuple[list[dict], list[dict]]:
    """(instruction rows, response rows) of one split. `vectors`: "noise" (train: `verdict_vectors` with the
    split's noise rate), "independent" or "heldout"."""
    rng = random.Random(f"{seed}/{split.label}")
    tasks = base_tasks(split.name)
    instructions, responses = [], []
    for i in range(split.count):
        task, topic = tasks[rng.randrange(len(tasks))]
        k = rng.randint(split.min_k, split.max_k)
        constraints = sample_constraints(rng, k, topic, split.types)
        instruction_id = f"{split.label}-{i:05d}"
        if vectors == "noise":
            drawn = verdict_vectors(k, split.responses, rng.random() < split.noise_rate, rng)
        elif vectors == "heldout":
            drawn = heldout_vectors(k, split.responses, rng)
        else:
            drawn = independent_vectors(k, split.responses, rng)
        base_seed = rng.getrandbits(32)
        instructions.append(instruction_row(instruction_id, task, constraints))
        for sample, verdicts in enumerate(drawn):
            text = controlled_response(constraints, verdicts, topic, base_seed, rng)
            # Extra fields travel into each pair's provenance as the sampler's (`pool_builder.response_provenance`).
            row = {"key": instruction_id, "sample_id": sample, "response": text, "generator": "controlled"}
            responses.append(row | {"planned_verdicts": list(verdicts)})
    return instructions, responses


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_split(split: SplitSettings, seed: int, vectors: str, folder: Path) -> dict[str, str]:
    """Writes `<label>_instructions.jsonl` and `<label>_responses.jsonl` into `folder`; returns their paths."""
    instructions, responses = build_split(split, seed, vectors)
    paths = {
        "instructions": folder / f"{split.label}_instructions.jsonl",
        "responses": folder / f"{split.label}_responses.jsonl",
    }
    write_jsonl(paths["instructions"], instructions)
    write_jsonl(paths["responses"], responses)
    return {name: str(path) for name, path in paths.items()}
