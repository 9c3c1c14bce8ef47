"""One instruction-following evaluation (`rpo-jax eval` without `--suite pairs`): pick the prompt file, refuse
what cannot be scored before any response is generated, get the responses (a file, or a generator the caller
passes in: the model side lives in the training library, which this package never imports), score them, and
write the per-prompt verdicts and the results JSON.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.constraints import scoring
from data_pipeline.constraints.conversation_files import conversation_layout
from data_pipeline.constraints.multi_turn import run_multi_turn_eval
from data_pipeline.constraints.score_report import format_results, write_per_prompt
from data_pipeline.errors import UserError
from data_pipeline.files import write_json_atomic

# (prompt file, responses file to write) -> None
Generator = Callable[[Path, Path], None]


@dataclass(frozen=True)
class IFEvalSettings:
    """What to score; the flags of `rpo-jax eval` map onto these one to one."""

    suite: str | None = None  # ifeval | ifbench: its shipped prompts and its missing-response rule
    prompts: str | None = None  # any IFEval-format prompt file, or a conversation file (overrides the suite's)
    responses: str | None = None  # None: the caller's generator writes them
    limit: int = 0  # only the first N prompts or conversations (0 = all)
    skip_unsupported: bool = False  # leave out prompts using ids whose NLTK data is not shipped
    skip_bad: bool = False  # leave out (and count) rows with unknown ids, bad params or an unjudged language
    allow_missing: bool = False  # prompts without a response / responses without a prompt are not an error
    per_prompt: str | None = None  # JSONL of per-prompt verdicts
    output: str | None = None  # results JSON

    def __post_init__(self) -> None:
        if self.suite is None and self.prompts is None:
            raise UserError("give --suite (ifeval, ifbench, pairs) or --prompts FILE")
        if self.suite is not None and self.suite not in scoring.BENCHMARKS:
            raise UserError(f"--suite must be one of {', '.join(scoring.BENCHMARKS)} or pairs")
        if self.limit < 0:
            raise UserError(f"--limit must be >= 0, got {self.limit}")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise UserError(f"--prompts {self.prompts}: no such file")
        if self.responses is not None and not Path(self.responses).is_file():
            raise UserError(f"--responses {self.responses}: no such file")


def run_if_eval(settings: IFEvalSettings, generate: Generator | None = None) -> dict:
    """Scores (generating first when `settings.responses` is None), prints the report, writes the outputs.
    A conversation file (Multi-IF's columns, or a system prompt and turns) is judged turn by turn (`multi_turn`),
    the generator answering its turns one after the other with its earlier answers in context."""
    layout = conversation_layout(settings.prompts) if settings.prompts else None
    if layout is not None:
        return run_multi_turn_eval(settings, generate, layout)
    benchmark = scoring.BENCHMARKS[settings.suite or "ifeval"]
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        source = settings.prompts or scoring.SUITE_INPUTS[settings.suite]
        input_path = scoring.limited_input(source, settings.limit, scratch)
        # Before spending time generating.
        scoring.refuse_unsupported(input_path, settings.skip_unsupported, settings.skip_bad)
        responses = settings.responses
        if responses is None:
            if generate is None:
                raise UserError("generating needs --checkpoint and --tokenizer (or pass --responses)")
            responses = scratch / "responses.jsonl"
            generate(input_path, responses)
        results, per_prompt = scoring.score_detailed(
            input_path,
            responses,
            benchmark,
            skip_unsupported=settings.skip_unsupported,
            skip_bad=settings.skip_bad,
            allow_missing=settings.allow_missing,
        )
    results["prompt_file"] = str(source)
    print(format_results(results))
    if settings.per_prompt:
        write_per_prompt(settings.per_prompt, per_prompt)
    if settings.output:
        write_json_atomic(settings.output, results)
    return results
