"""Bookkeeping of one `build-pairs` run, written to stats.json.

Every input unit ends in exactly one outcome: each response row for the pool recipes (rpo, iopo, dpo with
--responses), each preference row for the imports. `to_json` checks that the outcomes sum to the rows read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from data_pipeline.pairs.readers import BadRows


@dataclass
class BuildStats:
    recipe: str
    unit: str  # "responses" (pool recipes) or "rows" (imports)
    bad: BadRows = field(default_factory=BadRows)
    inputs: Counter = field(default_factory=Counter)  # rows read per input kind
    outcomes: Counter = field(default_factory=Counter)  # one per input unit (response or row)
    candidate_drops: Counter = field(default_factory=Counter)  # pairs/directions considered but not emitted
    pairs_by_g: Counter = field(default_factory=Counter)
    constraint_types: dict[str, Counter] = field(default_factory=dict)
    instructions_without_responses: int = 0
    judge_reversal_failures: int = 0
    judge_counts: Counter = field(default_factory=Counter)
    emitted: int = 0
    split: dict[str, int] = field(default_factory=dict)

    def constraint_type(self, type_: str) -> Counter:
        return self.constraint_types.setdefault(type_, Counter())

    def total_units(self) -> int:
        return self.inputs["responses_rows"] if self.unit == "responses" else self.inputs["pair_rows"]

    def check_accounting(self) -> None:
        total = sum(self.outcomes.values())
        if total != self.total_units():
            raise AssertionError(
                f"stats do not account for every input {self.unit}: outcomes sum to {total}, "
                f"read {self.total_units()} ({dict(self.outcomes)})"
            )

    def main_drop_reason(self) -> str:
        """Why a build emitted nothing, in words: the commonest drop of a candidate pair when there were any,
        else the commonest reason why input rows never became candidates."""
        if self.candidate_drops:
            drop, n = self.candidate_drops.most_common(1)[0]
            return f"{n} of {sum(self.candidate_drops.values())} candidate pair(s) dropped as {drop!r}"
        no_response = self.instructions_without_responses
        causes = [
            *(
                (n, f"{n} input row(s) were bad ({reason}; see stats.json bad_input)")
                for reason, n in self.bad.counts.items()
            ),
            *(
                (n, f"{n} {self.unit} ended as {outcome!r}")
                for outcome, n in self.outcomes.items()
                if outcome not in ("in_pair", "emitted", "bad_input")
            ),
            (no_response, f"{no_response} instruction(s) had no response"),
        ]
        count, text = max(causes, key=lambda cause: cause[0])
        if count == 0:
            return f"no candidate pair ({self.total_units()} {self.unit} read; a pair needs two per instruction)"
        return text

    def to_json(self) -> dict:
        self.check_accounting()
        return {
            "recipe": self.recipe,
            "inputs": dict(sorted(self.inputs.items())),
            self.unit: {"total": self.total_units(), "by_outcome": dict(sorted(self.outcomes.items()))},
            "emitted_records": self.emitted,
            # Pairs whose two scores are equal, dropped (never trained as a preference): imported rows with equal
            # score fields, and pool pairs with as many constraints met on both sides.
            "ties": self.outcomes["ties"] + self.candidate_drops["dpo_equal_scores"],
            "split": self.split,
            "pairs_by_g": {str(g): n for g, n in sorted(self.pairs_by_g.items())},
            "candidate_drops": dict(sorted(self.candidate_drops.items())),
            "constraint_types": {
                t: {
                    "seen": c["seen"],
                    "reversed_in_prompts": c["reversed_in_prompts"],
                    "non_reversible_skipped": c["non_reversible_skipped"],
                }
                for t, c in sorted(self.constraint_types.items())
            },
            "instructions_without_responses": self.instructions_without_responses,
            "judge": {
                **{k: self.judge_counts[k] for k in ("requests", "cache_hits", "retries", "parse_errors")},
                "reversal_failures": self.judge_reversal_failures,
            },
            "bad_input": self.bad.to_json(),
        }
