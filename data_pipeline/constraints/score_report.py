"""What a scoring run reports: the four accuracies, a summary per instruction id and per number of constraints
(a table for the terminal, the same numbers in the results JSON), and one JSON line of verdicts per prompt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.files import write_jsonl_atomic

ACCURACY_KEYS = ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc")


@dataclass(frozen=True)
class PromptVerdicts:
    """One prompt's verdicts; `strict` / `loose` are None when it has no response and is left out (IFEval)."""

    row: object  # prompt_files.InputRow
    has_response: bool
    strict: list[bool] | None
    loose: list[bool] | None
    turn: int | None = None  # the turn of a conversation (multi-turn evaluation), 1-based

    @property
    def scored(self) -> bool:
        return self.strict is not None

    def to_json(self) -> dict:
        ids = self.row.instruction_id_list
        verdicts = zip(ids, self.strict or [None] * len(ids), self.loose or [None] * len(ids), strict=True)
        return {
            "key": self.row.key,
            **({"turn": self.turn} if self.turn is not None else {}),
            "line": self.row.line,
            "language": self.row.language,
            "has_response": self.has_response,
            "scored": self.scored,
            "prompt_strict": all(self.strict) if self.scored else None,
            "prompt_loose": all(self.loose) if self.scored else None,
            "instructions": [{"id": i, "strict": s, "loose": lo} for i, s, lo in verdicts],
        }


def _rate(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(per_prompt: list[PromptVerdicts]) -> dict:
    """The four accuracies over the scored prompts, with per-id and per-number-of-constraints breakdowns."""
    scored = [p for p in per_prompt if p.scored]
    by_id: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"strict": [], "loose": []})
    by_count: dict[int, dict[str, list[bool]]] = defaultdict(lambda: {"strict": [], "loose": []})
    for p in scored:
        for instruction_id, strict, loose in zip(p.row.instruction_id_list, p.strict, p.loose, strict=True):
            by_id[instruction_id]["strict"].append(strict)
            by_id[instruction_id]["loose"].append(loose)
        by_count[len(p.strict)]["strict"].append(all(p.strict))
        by_count[len(p.strict)]["loose"].append(all(p.loose))
    inst_strict = [v for p in scored for v in p.strict]
    inst_loose = [v for p in scored for v in p.loose]
    return {
        "prompt_level_strict_acc": _rate([all(p.strict) for p in scored]),
        "prompt_level_loose_acc": _rate([all(p.loose) for p in scored]),
        "inst_level_strict_acc": _rate(inst_strict),
        "inst_level_loose_acc": _rate(inst_loose),
        "num_prompts_scored": len(scored),
        "num_instructions_scored": len(inst_strict),
        "by_instruction_id": {
            i: {"instructions": len(v["strict"]), "strict_acc": _rate(v["strict"]), "loose_acc": _rate(v["loose"])}
            for i, v in sorted(by_id.items())
        },
        "by_num_constraints": {
            str(n): {"prompts": len(v["strict"]), "strict_acc": _rate(v["strict"]), "loose_acc": _rate(v["loose"])}
            for n, v in sorted(by_count.items())
        },
    }


def _table(title: str, header: str, rows: dict[str, dict], count_key: str) -> list[str]:
    width = max([len(header), *map(len, rows)])
    lines = [title, f"  {header:<{width}}  {count_key:>12}  strict   loose"]
    for name, row in rows.items():
        lines.append(f"  {name:<{width}}  {row[count_key]:>12}  {row['strict_acc']:.4f}  {row['loose_acc']:.4f}")
    return lines


def format_results(results: dict) -> str:
    """The accuracies, the two summary tables, and lines naming what was left out or unmatched."""
    width = max(map(len, ACCURACY_KEYS))
    lines = [f"{key:<{width}}  {results[key]:.4f}" for key in ACCURACY_KEYS]
    lines.append(f"{results['num_prompts_scored']} prompts, {results['num_instructions_scored']} instructions scored")
    lines += _table("by number of constraints:", "constraints", results["by_num_constraints"], "prompts")
    lines += _table("by instruction id:", "instruction id", results["by_instruction_id"], "instructions")
    if results["num_prompts_skipped_unsupported"]:
        lines.append(
            f"skipped {results['num_prompts_skipped_unsupported']} prompt(s) using "
            f"{', '.join(results['unsupported_instruction_ids'])} (not checkable here)"
        )
    if results["num_prompts_skipped_bad"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in results["prompts_skipped_bad_by_reason"].items())
        lines.append(f"skipped {results['num_prompts_skipped_bad']} bad prompt(s) ({reasons})")
    if results["num_prompts_without_response"]:
        rule = "counted as failed" if results["missing_responses_count_as_failed"] else "left out"
        lines.append(f"{results['num_prompts_without_response']} prompt(s) without a response ({rule})")
    if results.get("num_responses_skipped"):
        lines.append(f"{results['num_responses_skipped']} response(s) skipped with their prompts")
    if results["num_responses_without_prompt"]:
        lines.append(f"{results['num_responses_without_prompt']} response(s) without a prompt (not scored)")
    return "\n".join(lines)


def write_per_prompt(path: str | Path, per_prompt: list[PromptVerdicts]) -> None:
    """One JSON line per prompt: key, language, and each instruction id with its strict and loose verdicts."""
    write_jsonl_atomic(path, (p.to_json() for p in per_prompt))
