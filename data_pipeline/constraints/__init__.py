"""Verifiable constraints: what a response must satisfy, how to check it, how to reverse it, how to score it.

`constraint` (the `Constraint` type with `check` / `reverse` / `render`, re-exported here), `params` (parameter
schemas), `reversal` (the `rpo:*` reversed ids), `ifeval` / `ifbench` (adapters of the `if-verifiable` registry
package's checkers), `languages` (which languages each checker judges), `mifeval_rules` (M-IFEval's rules for its
`fr:` / `ja:` / `es:` ids), `prompt_files` / `scoring` / `score_report` / `if_eval` (accuracies of a responses file
on any IFEval-format prompt file), `conversation_files` / `multi_turn` (conversations judged turn by turn) and
`llm_judge`
(free-form constraints through an OpenAI-compatible endpoint). The bottom wing: imports nothing else from
data_pipeline but `files` and `errors`.
"""

from data_pipeline.constraints.constraint import (
    NON_REVERSIBLE_TYPES,
    REVERSIBLE_TYPES,
    Constraint,
    ConstraintError,
    check,
    constraints_from_ifeval_row,
    ifeval_row_entries,
    is_reversible,
    render,
    reverse,
)
from data_pipeline.constraints.languages import UnsupportedLanguageError

__all__ = [
    "NON_REVERSIBLE_TYPES",
    "REVERSIBLE_TYPES",
    "Constraint",
    "ConstraintError",
    "check",
    "constraints_from_ifeval_row",
    "ifeval_row_entries",
    "is_reversible",
    "render",
    "reverse",
    "UnsupportedLanguageError",
]
