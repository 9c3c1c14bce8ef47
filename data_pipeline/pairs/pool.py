"""The response pool of one instruction: verdicts, dedupe, reversed prompts x_S, their re-check (docs/algorithms.md §5).

For a deduped response y_i with verdicts v_i, its prompt x_{S_i} lists every constraint as c_k when v_i[k] and
rev(c_k) otherwise, so y_i satisfies all of them; each constraint is listed in the message that states it (the
system prompt, an earlier user turn or the final one). The prompt depends on v_i only, so it is built once per
response (`Variant`). A constraint with no clean reversal that y_i fails cannot be listed; it is dropped from
x_{S_i} when the instruction keeps the task of its message apart from its constraints (`Instruction.task_at`), and
otherwise (the constraint is written into the request text, as in IFEval) y_i gets no prompt at all: it can then
never be a chosen response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from data_pipeline import constraints as cons
from data_pipeline.constraints.llm_judge import JudgeParseError, LLMJudge
from data_pipeline.errors import UserError
from data_pipeline.pairs.constraint_specs import FREE_FORM, ConstraintSpec, Location
from data_pipeline.pairs.instructions import Instruction, ResponseRecord
from data_pipeline.pairs.schema import Message
from data_pipeline.pairs.stats import BuildStats

OVERRIDE_HEADER = (
    "The numbered requirements below replace any requirement stated above that conflicts with them. "
    "Your response must satisfy all of them:"
)
TASK_HEADER = "Requirements:"


class JudgeNotConfiguredError(UserError):
    """Free-form constraints and no LLM judge to judge them."""


class PairInvariantError(RuntimeError):
    """An emitted pair failed its checker re-check (chosen K/K, rejected K-g): a bug, never bad data."""


@dataclass(frozen=True)
class Judged:
    record: ResponseRecord
    verdicts: tuple[bool, ...]


@dataclass(frozen=True)
class Variant:
    """x_{S_i}: the listed constraints (kept or reversed) and the prompt that states them."""

    listed: tuple[tuple[int, ConstraintSpec, bool], ...]  # (index in instruction, spec as listed, reversed?)
    messages: tuple[Message, ...]

    def failures_of(self, verdicts: Sequence[bool]) -> int:
        """How many listed constraints a response with these original verdicts fails (exact for clean reversals)."""
        return sum(verdicts[k] if rev else not verdicts[k] for k, _, rev in self.listed)


class ConstraintOracle:
    """Verdicts and reversals: checkers for checkable constraints, the LLM judge for free-form ones."""

    def __init__(self, judge: LLMJudge | None, stats: BuildStats):
        self.judge = judge
        self.stats = stats
        self._reversals: dict[ConstraintSpec, ConstraintSpec | None] = {}

    def _require_judge(self, instruction: Instruction) -> LLMJudge:
        if self.judge is None:
            raise JudgeNotConfiguredError(
                f"{instruction.source}:{instruction.line}: instruction {instruction.id!r} has free_form "
                "constraints; configure the LLM judge (--judge-base-url, --judge-model; `rpo-jax serve` runs one)"
            )
        return self.judge

    def verdicts(self, instruction: Instruction, records: Sequence[ResponseRecord]) -> list[Judged | None]:
        """Per-constraint verdicts of each response; None where the judge's answer could not be parsed."""
        prompt = instruction.final_user_message
        free = [k for k, s in enumerate(instruction.constraints) if not s.checkable]
        free_verdicts: list = [[] for _ in records]
        if free:
            judge = self._require_judge(instruction)
            texts = [instruction.constraints[k].text for k in free]
            free_verdicts = judge.judge_many([(prompt, r.text, texts) for r in records])
        judged: list[Judged | None] = []
        for record, free_v in zip(records, free_verdicts, strict=True):
            if isinstance(free_v, JudgeParseError):
                judged.append(None)
                continue
            by_index = dict(zip(free, free_v, strict=True))
            verdicts = tuple(
                by_index[k] if k in by_index else cons.check(s.to_constraint(), record.text, prompt)
                for k, s in enumerate(instruction.constraints)
            )
            ids = (s.id for s in instruction.constraints)
            judged.append(Judged(replace(record, verdicts=tuple(zip(ids, verdicts, strict=True))), verdicts))
        return judged

    def reversal(self, instruction: Instruction, spec: ConstraintSpec) -> ConstraintSpec | None:
        if spec not in self._reversals:
            self._reversals[spec] = self._reverse(instruction, spec)
        return self._reversals[spec]

    def _reverse(self, instruction: Instruction, spec: ConstraintSpec) -> ConstraintSpec | None:
        if spec.checkable:
            reversed_c = cons.reverse(spec.to_constraint())
            return None if reversed_c is None else ConstraintSpec.from_constraint(f"{spec.id}~rev", reversed_c)
        try:
            text = self._require_judge(instruction).reverse(spec.text)
        except JudgeParseError:
            self.stats.judge_reversal_failures += 1
            return None
        return ConstraintSpec(f"{spec.id}~rev", FREE_FORM, (), text)

    def recheck(
        self, prompt: str, response: str, specs: Sequence[ConstraintSpec], original_prompt: str
    ) -> list[bool] | None:
        """Verdicts of `response` on the listed `specs`; None when the judge's answer could not be parsed."""
        free = [s.text for s in specs if not s.checkable]
        free_v = iter([])
        if free:
            try:
                free_v = iter(self.judge.judge(prompt, response, free))  # type: ignore[union-attr]
            except JudgeParseError:
                return None
        return [
            next(free_v) if not s.checkable else cons.check(s.to_constraint(), response, original_prompt) for s in specs
        ]


def dedupe(judged: Sequence[Judged]) -> tuple[list[Judged], list[Judged]]:
    """(first response of each verdict vector in input order, the later duplicates)."""
    kept: dict[tuple[bool, ...], Judged] = {}
    duplicates = []
    for item in judged:
        if item.verdicts in kept:
            duplicates.append(item)
        else:
            kept[item.verdicts] = item
    return list(kept.values()), duplicates


def requirement_message(instruction: Instruction, location: Location, specs: Sequence[ConstraintSpec]) -> str:
    """The message at `location` stating `specs` instead of its original constraints: its task followed by the
    numbered requirements when the source kept the task apart, else the original message, the override header and
    the requirements."""
    numbered = "\n".join(f"{i}. {s.text}" for i, s in enumerate(specs, start=1))
    task = instruction.task_at(location)
    if task is not None:
        return f"{task}\n\n{TASK_HEADER}\n{numbered}" if specs else task
    return f"{instruction.message_at(location)}\n\n{OVERRIDE_HEADER}\n{numbered}"


def build_variant(
    instruction: Instruction, verdicts: Sequence[bool], oracle: ConstraintOracle, stats: BuildStats
) -> Variant | None:
    """x_{S} for a response with `verdicts`; None when a non-reversible constraint it fails cannot be removed.

    Only the messages that state a constraint the response fails are rewritten (each lists every constraint it
    states, kept or reversed); the others, and the earlier assistant turns, stay as they are."""
    listed: list[tuple[int, ConstraintSpec, bool]] = []
    changed: list[Location] = []  # the locations to rewrite, in the order their first failure is met
    for k, spec in enumerate(instruction.constraints):
        if verdicts[k]:
            listed.append((k, spec, False))
            continue
        location = instruction.location(spec)
        if location not in changed:
            changed.append(location)
        reversed_spec = oracle.reversal(instruction, spec)
        if reversed_spec is not None:
            listed.append((k, reversed_spec, True))
            continue
        stats.constraint_type(spec.type)["non_reversible_skipped"] += 1
        if instruction.task_at(location) is None:
            return None
    if not changed:
        return Variant(tuple(listed), instruction.prompt_messages())
    stated_at = [instruction.location(instruction.constraints[k]) for k, _, _ in listed]
    rewritten = {
        location: requirement_message(
            instruction, location, [s for (_, s, _), at in zip(listed, stated_at, strict=True) if at == location]
        )
        for location in changed
    }
    for k, _, was_reversed in listed:
        if was_reversed:
            stats.constraint_type(instruction.constraints[k].type)["reversed_in_prompts"] += 1
    return Variant(tuple(listed), instruction.prompt_messages(rewritten))


def verify_direction(
    instruction: Instruction, variant: Variant, chosen: Judged, rejected: Judged, g: int, oracle: ConstraintOracle
) -> bool:
    """Re-run the checks on the emitted prompt: chosen passes K/K, rejected fails exactly g.

    A checker that disagrees with the variant's bookkeeping raises PairInvariantError (a bug). A free-form
    constraint is re-judged on the new prompt and the judge may change its mind: that returns False (the pair is
    dropped and counted), as does an unparsable answer.
    """
    specs = [s for _, s, _ in variant.listed]
    # A reversed constraint fails exactly where the original passes.
    expected_rejected = [rejected.verdicts[k] != rev for k, _, rev in variant.listed]
    if expected_rejected.count(False) != g:
        raise PairInvariantError(
            f"instruction {instruction.id!r}: g={g} but the variant implies {expected_rejected.count(False)} failures"
        )
    prompt = variant.messages[-1].content
    original = instruction.final_user_message
    chosen_v = oracle.recheck(prompt, chosen.record.text, specs, original)
    rejected_v = oracle.recheck(prompt, rejected.record.text, specs, original)
    if chosen_v is None or rejected_v is None:
        return False
    for spec, got_c, got_r, want_r in zip(specs, chosen_v, rejected_v, expected_rejected, strict=True):
        if spec.checkable and (not got_c or got_r != want_r):
            raise PairInvariantError(
                f"instruction {instruction.id!r}: re-check of {spec.type} {dict(spec.params)} on chosen "
                f"{chosen.record.response_id} = {got_c} (want True), on rejected {rejected.record.response_id} = "
                f"{got_r} (want {want_r})"
            )
    return all(chosen_v) and rejected_v == expected_rejected
