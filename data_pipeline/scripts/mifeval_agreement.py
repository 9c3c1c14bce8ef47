"""How often our verdicts on M-IFEval's prefixed ids agree with the strict verdicts M-IFEval published
(`constraints/mifeval_rules.py`; the numbers are quoted in data_pipeline/README.md, "Languages").

    python data_pipeline/scripts/mifeval_agreement.py MIFEVAL_CHECKOUT [--languages fr ja es]

MIFEVAL_CHECKOUT is a checkout of lightblue-tech/M-IFEval at commit ae9970e (its `data/<lang>_input_data.jsonl`
are the prompts its `evaluations/<lang>_input_response_data_<model>/eval_results_strict.jsonl` were made on; the
checkers are the same up to 22b1768). Every published model found is compared, per prefixed id; ids without a rule
here are counted as refused, not compared. Prints one line per id (agreeing / compared, first disagreements).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from data_pipeline.constraints import ConstraintError
from data_pipeline.constraints.constraint import ifeval_row_entries
from data_pipeline.constraints.languages import split_language_prefix
from data_pipeline.constraints.mifeval_rules import has_rule, is_language_rule
from data_pipeline.constraints.prompt_files import validate_entry
from data_pipeline.constraints.scoring import check_instruction


def our_verdict(instruction_id: str, kwargs: dict, response: str, prompt: str) -> bool:
    _, [(judged_id, judged_kwargs, _)] = ifeval_row_entries(
        {"instruction_id_list": [instruction_id], "kwargs": [kwargs]}, "<m-ifeval>", 0
    )
    if not is_language_rule(judged_id):
        validate_entry(judged_id, judged_kwargs, "<m-ifeval>", 0, 0)
    return check_instruction(judged_id, judged_kwargs, response, prompt)


def compare(checkout: Path, language: str, agree: Counter, total: Counter, refused: Counter, misses: dict) -> None:
    inputs = {}
    for line in (checkout / "data" / f"{language}_input_data.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        inputs[row["prompt"]] = row
    for results in sorted(
        (checkout / "evaluations").glob(f"{language}_input_response_data_*/eval_results_strict.jsonl")
    ):
        model = results.parent.name.removeprefix(f"{language}_input_response_data_")
        for line in results.read_text(encoding="utf-8").splitlines():
            published = json.loads(line)
            row = inputs[published["prompt"]]
            for index, verdict in enumerate(published["follow_instruction_list"]):
                instruction_id = row["instruction_id_list"][index]
                if not has_rule(*split_language_prefix(instruction_id)):
                    refused[instruction_id] += 1
                    continue
                try:
                    ours = our_verdict(instruction_id, row["kwargs"][index], published["response"], row["prompt"])
                except ConstraintError as err:  # parameters no checker here accepts: refused, with the reason
                    refused[f"{instruction_id} ({err})"] += 1
                    continue
                total[instruction_id] += 1
                agree[instruction_id] += ours == verdict
                if ours != verdict:
                    misses[instruction_id].append(f"{model} key {row['key']}: ours {ours}, published {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of lightblue-tech/M-IFEval (commit ae9970e)")
    parser.add_argument("--languages", nargs="+", default=["fr", "ja", "es"], help="prefixes to compare")
    args = parser.parse_args()
    agree, total, refused, misses = Counter(), Counter(), Counter(), defaultdict(list)
    for language in args.languages:
        compare(args.checkout, language, agree, total, refused, misses)
    for instruction_id in sorted(total):
        print(
            f"{instruction_id:<52} {agree[instruction_id]:>5}/{total[instruction_id]:<5} {misses[instruction_id][:2]}"
        )
    print(f"agree on {sum(agree.values())} of {sum(total.values())} verdicts; {sum(refused.values())} refused")
    for reason, count in sorted(refused.items()):
        print(f"  refused {count:>4}  {reason}")


if __name__ == "__main__":
    main()
