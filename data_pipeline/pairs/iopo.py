"""IOPO quadruples from the RPO pool (docs/algorithms.md §6, "Ours").

(x1, y1, x2, y2) = (x_{S_i}, y_i, x_{S_j}, y_j) for each unordered pair where both RPO directions are valid: y1
satisfies every constraint of x1 and fails g_ij of x2; y2 the reverse. Sequences in the order (x1,y1) (x1,y2)
(x2,y2) (x2,y1); margin = min(g_ij, g_ji) (equal unless a non-reversible constraint was dropped from a prompt).
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


def iopo_quads(
    pools: Iterable[InstructionPool], oracle: ConstraintOracle, min_g: int, stats: BuildStats
) -> Iterator[PairRecord]:
    for pool in pools:
        directions = valid_directions(pool, min_g, stats)
        used: set[int] = set()
        for (i, j), g_ij in directions.items():
            if i > j:
                continue
            if (j, i) not in directions:
                stats.candidate_drops["iopo_only_one_direction_valid"] += 1
                continue
            g_ji = directions[(j, i)]
            x1, x2 = pool.variants[i], pool.variants[j]
            assert x1 is not None and x2 is not None
            y1, y2 = pool.responses[i], pool.responses[j]
            if not (
                verify_direction(pool.instruction, x1, y1, y2, g_ij, oracle)
                and verify_direction(pool.instruction, x2, y2, y1, g_ji, oracle)
            ):
                stats.candidate_drops["iopo_judge_recheck_disagrees"] += 1
                continue
            sequences = (
                Sequence(x1.messages, y1.record.text),
                Sequence(x1.messages, y2.record.text),
                Sequence(x2.messages, y2.record.text),
                Sequence(x2.messages, y1.record.text),
            )
            margin = min(g_ij, g_ji)
            instruction = pool.instruction
            provenance = {
                "source": instruction.source,
                "line": instruction.line,
                "instruction_id": instruction.id,
                "y1": response_provenance(y1),
                "y2": response_provenance(y2),
                "x1_constraints": variant_provenance(x1),
                "x2_constraints": variant_provenance(x2),
                "g_12": g_ij,
                "g_21": g_ji,
                "min_g": min_g,
            }
            used.update((i, j))
            stats.pairs_by_g[margin] += 1
            yield PairRecord.make("iopo", sequences, margin, instruction.id, provenance)
        mark_outcomes(pool, used, stats)
