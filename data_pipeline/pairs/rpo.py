"""RPO pairs, checker version (docs/algorithms.md §5, steps 4-8).

For each unordered pair (i, j) of deduped responses with Hamming(v_i, v_j) ≥ min_g, emit (x_{S_i}; y_i ≻ y_j; g)
and the mirror (x_{S_j}; y_j ≻ y_i; g) — each only when its prompt exists and keeps ≥ min_g differing constraints
(see pool.py for non-reversible constraints). Every emitted pair is re-checked: chosen K/K, rejected K-g.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_pipeline.pairs.pool import ConstraintOracle, verify_direction
from data_pipeline.pairs.pool_builder import (
    InstructionPool,
    mark_outcomes,
    response_provenance,
    valid_directions,
    variant_provenance,
)
from data_pipeline.pairs.schema import PairRecord, Sequence
from data_pipeline.pairs.stats import BuildStats


def direction_record(recipe: str, pool: InstructionPool, chosen: int, rejected: int, g: int, min_g: int) -> PairRecord:
    variant = pool.variants[chosen]
    assert variant is not None
    instruction = pool.instruction
    sequences = (
        Sequence(variant.messages, pool.responses[chosen].record.text),
        Sequence(variant.messages, pool.responses[rejected].record.text),
    )
    provenance = {
        "source": instruction.source,
        "line": instruction.line,
        "instruction_id": instruction.id,
        "chosen": response_provenance(pool.responses[chosen]),
        "rejected": response_provenance(pool.responses[rejected]),
        "prompt_constraints": variant_provenance(variant),
        "g": g,
        "min_g": min_g,
    }
    return PairRecord.make(recipe, sequences, g, instruction.id, provenance)


def rpo_pairs(
    pools: Iterable[InstructionPool], oracle: ConstraintOracle, min_g: int, stats: BuildStats
) -> Iterator[PairRecord]:
    for pool in pools:
        directions = valid_directions(pool, min_g, stats)
        used: set[int] = set()
        for (chosen, rejected), g in directions.items():
            variant = pool.variants[chosen]
            assert variant is not None
            if not verify_direction(
                pool.instruction, variant, pool.responses[chosen], pool.responses[rejected], g, oracle
            ):
                stats.candidate_drops["direction_judge_recheck_disagrees"] += 1
                continue
            used.update((chosen, rejected))
            stats.pairs_by_g[g] += 1
            yield direction_record("rpo", pool, chosen, rejected, g, min_g)
        mark_outcomes(pool, used, stats)
