"""From instructions + response rows to judged, deduped pools and their valid (chosen i, rejected j) directions.

Shared by the pool recipes (rpo, iopo, dpo baseline). A conversation that awaits its earlier answers
(`Instruction.awaits_answers`) gets one pool per set of answers its responses carry (`rpo-jax generate` answers the
earlier turns once per conversation, so its samples share them). Every response row gets exactly one outcome:
`unmatched_instruction`, `judge_parse_error`, `duplicate_verdicts`, `in_pair` or `no_pair` (bad rows are counted
by the reader under `bad_input`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from data_pipeline.pairs.instructions import Instruction, ResponseRecord
from data_pipeline.pairs.pool import ConstraintOracle, Judged, Variant, build_variant, dedupe
from data_pipeline.pairs.readers import BadRows, RawResponse, guard
from data_pipeline.pairs.schema import DataError
from data_pipeline.pairs.stats import BuildStats


@dataclass
class InstructionPool:
    instruction: Instruction
    responses: list[Judged]  # deduped by verdict vector, input order
    variants: list[Variant | None]  # x_{S_i} per response; None = cannot be a chosen response

    def hamming(self, i: int, j: int) -> int:
        return sum(a != b for a, b in zip(self.responses[i].verdicts, self.responses[j].verdicts, strict=True))


def match_responses(
    instructions: Sequence[Instruction], raw: Sequence[RawResponse], stats: BuildStats, bad: BadRows | None
) -> dict[str, list[ResponseRecord]]:
    """Responses per instruction id, matched by key, else by the exact text of the final user message."""
    by_id = {ins.id: ins for ins in instructions}
    by_prompt: dict[str, Instruction | None] = {}
    for ins in instructions:
        # Two instructions with one prompt text make a prompt-matched response ambiguous.
        by_prompt[ins.final_user_message] = None if ins.final_user_message in by_prompt else ins
    matched: dict[str, list[ResponseRecord]] = {ins.id: [] for ins in instructions}
    seen_ids: set[str] = set()
    for r in raw:
        if r.key is not None:
            instruction = by_id.get(r.key)
        else:
            instruction = by_prompt.get(r.prompt)  # type: ignore[arg-type]
            if instruction is None and r.prompt in by_prompt:
                stats.outcomes["ambiguous_prompt"] += 1
                continue
        if instruction is None:
            stats.outcomes["unmatched_instruction"] += 1
            continue
        sample = r.sample_id if r.sample_id is not None else f"line{r.line}"
        response_id = f"{instruction.id}#{sample}"
        problem = history_problem(instruction, r.history)
        if problem is not None and _skipped(DataError(r.source, r.line, "responses", problem, "history_mismatch"), bad):
            stats.outcomes["bad_input"] += 1
            continue
        if response_id in seen_ids:
            err = DataError(
                r.source, r.line, "sample_id", f"duplicate response {response_id!r}", reason="duplicate_response"
            )
            if _skipped(err, bad):
                stats.outcomes["bad_input"] += 1
                continue
        seen_ids.add(response_id)
        source = {
            "file": r.source,
            "line": r.line,
            "sample_id": r.sample_id,
            **({"sampler": r.sampler} if r.sampler else {}),
        }
        history = r.history if instruction.awaits_answers else ()  # a given history is the instruction's own
        matched[instruction.id].append(ResponseRecord(instruction.id, response_id, r.text, source, history=history))
    return matched


def history_problem(instruction: Instruction, history: tuple[str, ...]) -> str | None:
    """Why a response's answers to the earlier turns (`history`) do not fit `instruction`, or None."""
    earlier = instruction.user_turn_count - 1
    if instruction.awaits_answers and len(history) != earlier:
        return (
            f"instruction {instruction.id!r} has {earlier + 1} user turns and awaits the answers to the first "
            f"{earlier}: give one answer per user turn, the last being the response (got {len(history) + 1})"
        )
    own = tuple(t.content for t in instruction.turns if t.role == "assistant")
    if not instruction.awaits_answers and history and history != own:
        return f"the earlier answers differ from instruction {instruction.id!r}'s own assistant turns"
    return None


def _skipped(err: DataError, bad: BadRows | None) -> bool:
    """Raise `err`, or, under --skip-bad, record it and return True."""
    return guard(bad, lambda: _raise(err)) is None


def _raise(err: Exception):
    raise err


def build_pools(
    instructions: Sequence[Instruction],
    matched: dict[str, list[ResponseRecord]],
    oracle: ConstraintOracle,
    stats: BuildStats,
) -> Iterator[InstructionPool]:
    for instruction in instructions:
        for spec in instruction.constraints:
            stats.constraint_type(spec.type)["seen"] += 1
        records = matched[instruction.id]
        if not records:
            stats.instructions_without_responses += 1
            continue
        # Responses answer one prompt only when they share the answers to the earlier turns: one pool per history.
        by_history: dict[tuple[str, ...], list[ResponseRecord]] = {}
        for record in records:
            by_history.setdefault(record.history, []).append(record)
        for history, group in by_history.items():
            answered = instruction.answered(history)
            judged = oracle.verdicts(answered, group)
            stats.outcomes["judge_parse_error"] += sum(j is None for j in judged)
            kept, duplicates = dedupe([j for j in judged if j is not None])
            stats.outcomes["duplicate_verdicts"] += len(duplicates)
            variants = [build_variant(answered, j.verdicts, oracle, stats) for j in kept]
            yield InstructionPool(answered, kept, variants)


def valid_directions(pool: InstructionPool, min_g: int, stats: BuildStats) -> dict[tuple[int, int], int]:
    """{(i, j): g} for each ordered pair where y_i ≻ y_j under x_{S_i} with g ≥ min_g listed constraints apart."""
    directions: dict[tuple[int, int], int] = {}
    n = len(pool.responses)
    for i in range(n):
        for j in range(i + 1, n):
            if pool.hamming(i, j) < min_g:
                stats.candidate_drops["pair_hamming_below_min_g"] += 1
                continue
            for a, b in ((i, j), (j, i)):
                variant = pool.variants[a]
                if variant is None:
                    stats.candidate_drops["direction_chosen_fails_unremovable_non_reversible"] += 1
                    continue
                g = variant.failures_of(pool.responses[b].verdicts)
                if g < min_g:
                    stats.candidate_drops["direction_g_below_min_after_non_reversible_drop"] += 1
                    continue
                directions[(a, b)] = g
    return directions


def mark_outcomes(pool: InstructionPool, used: set[int], stats: BuildStats) -> None:
    for index in range(len(pool.responses)):
        stats.outcomes["in_pair" if index in used else "no_pair"] += 1


def response_provenance(judged: Judged) -> dict:
    return {"response_id": judged.record.response_id, **judged.record.source, "verdicts": dict(judged.record.verdicts)}


def variant_provenance(variant: Variant) -> list[dict]:
    return [{"id": spec.id, "type": spec.type, "reversed": rev} for _, spec, rev in variant.listed]
