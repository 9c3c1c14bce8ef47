"""The DPO baseline from the RPO pool (docs/algorithms.md §5 step 8): original prompt, more constraints met ≻ fewer.

`pairing="all"`: every pair (i, j) of deduped responses with Hamming(v_i, v_j) ≥ min_g and different scores.
`pairing="best_worst"`: one pair per instruction, the response satisfying the most constraints (the first such in
input order) over the one satisfying the fewest (the last such), if their Hamming distance is ≥ min_g.
Margin 0 (DPO has none); g and both scores are in the provenance. Ties in score are dropped (`dpo_equal_scores`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_pipeline.pairs.pool_builder import InstructionPool, mark_outcomes, response_provenance
from data_pipeline.pairs.schema import PairRecord, Sequence
from data_pipeline.pairs.stats import BuildStats

DPO_PAIRINGS = ("all", "best_worst")


def _candidates(pool: InstructionPool, pairing: str) -> list[tuple[int, int]]:
    n = len(pool.responses)
    if pairing == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    scores = [sum(r.verdicts) for r in pool.responses]
    # The first best and the last worst: distinct responses even when all scores tie (then dropped as a tie).
    worst = n - 1 - scores[::-1].index(min(scores))
    return [(scores.index(max(scores)), worst)] if n >= 2 else []


def dpo_baseline_pairs(
    pools: Iterable[InstructionPool], min_g: int, stats: BuildStats, pairing: str = "all"
) -> Iterator[PairRecord]:
    for pool in pools:
        used: set[int] = set()
        messages = pool.instruction.prompt_messages()
        for i, j in _candidates(pool, pairing):
            g = pool.hamming(i, j)
            if g < min_g:
                stats.candidate_drops["pair_hamming_below_min_g"] += 1
                continue
            score_i, score_j = sum(pool.responses[i].verdicts), sum(pool.responses[j].verdicts)
            if score_i == score_j:
                stats.candidate_drops["dpo_equal_scores"] += 1
                continue
            chosen, rejected = (i, j) if score_i > score_j else (j, i)
            used.update((i, j))
            stats.pairs_by_g[g] += 1
            instruction = pool.instruction
            provenance = {
                "source": instruction.source,
                "line": instruction.line,
                "instruction_id": instruction.id,
                "g": g,
                "min_g": min_g,
                "chosen": response_provenance(pool.responses[chosen]),
                "rejected": response_provenance(pool.responses[rejected]),
                "scores": [max(score_i, score_j), min(score_i, score_j)],
                "num_constraints": len(instruction.constraints),
            }
            sequences = (
                Sequence(messages, pool.responses[chosen].record.text),
                Sequence(messages, pool.responses[rejected].record.text),
            )
            yield PairRecord.make("dpo", sequences, 0, instruction.id, provenance)
        mark_outcomes(pool, used, stats)
