"""Multi-turn instruction-following evaluation: a conversation file (`conversation_files`) and one response per
turn, given (`--responses`: JSONL rows `key`, `responses` = one string per turn) or generated turn by turn by the
caller's generator, each answer in the context of the next turn.

Scoring follows Multi-IF (facebookresearch/Multi-IF, `metrics.py`, `MultiTurnInstructionFollowingPromptSolution.
metrics_gen`): at turn k every conversation that has a turn k with constraints is one prompt, its turn-k response
judged on turn k's constraints (cumulative in Multi-IF's data, system + turn in the system-and-turns layout) by
IFEval's strict and loose rules (`scoring.score_row`, the loose variants being Multi-IF's `gen_acc_loose`); per turn,
over all languages and per language, we report prompt- and instruction-level strict and loose accuracy and
`overall`, their mean: Multi-IF's `turn_k_<language>_overall` (its `all_languages` is our `all`; its languages are
names, ours ISO codes: "French" is `fr`). Differences: a turn whose constraints no checker here judges in its
language is refused or (`skip_bad`) left out and counted, where Multi-IF's checker judges it anyway; Multi-IF's
confidence intervals are not computed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from data_pipeline.constraints.conversation_files import Conversation, SkippedTurns, load_conversations
from data_pipeline.constraints.params import ConstraintError, where
from data_pipeline.constraints.prompt_files import read_jsonl
from data_pipeline.constraints.score_report import ACCURACY_KEYS, PromptVerdicts, summarize, write_per_prompt
from data_pipeline.constraints.scoring import score_row, unsupported_reason
from data_pipeline.errors import UserError
from data_pipeline.files import write_json_atomic, write_jsonl_atomic

# (prompts file, responses file to write) -> None: `rpo-jax generate`'s turn-by-turn generation, whose prompt rows
# `key`, `system`, `user_turns` get output rows with `key` and `responses` (the answer to every turn).
Generator = Callable[[Path, Path], None]
ALL_LANGUAGES = "all"


def load_turn_responses(path: str | Path) -> dict[str, tuple[list[str], int]]:
    """str(key) -> (one response per turn, line). Keys are compared as text: Multi-IF's CSV gives 1001 as "1001"."""
    responses: dict[str, tuple[list[str], int]] = {}
    for line, record in read_jsonl(path):
        if "key" not in record:
            raise ConstraintError(f"{where(str(path), line, 'key')}: missing")
        answers = record.get("responses")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ConstraintError(f"{where(str(path), line, 'responses')}: must be a list of strings, one per turn")
        if str(record["key"]) in responses:
            first = responses[str(record["key"])][1]
            raise ConstraintError(f"{where(str(path), line, 'key')}: duplicate key, first given on line {first}")
        responses[str(record["key"])] = (answers, line)
    return responses


def _refuse_unsupported(conversations: list[Conversation], path, skip_unsupported: bool) -> list[str]:
    ids = sorted({i for c in conversations for t in c.turns if t.judged for i in t.judged.instruction_id_list})
    unsupported = [i for i in ids if unsupported_reason(i) is not None]
    if unsupported and not skip_unsupported:
        reasons = "; ".join(f"{i!r} ({unsupported_reason(i)})" for i in unsupported)
        raise ConstraintError(
            f"{path}: turns use instruction ids that cannot be checked here: {reasons}. "
            "Skip those turns with --skip-unsupported."
        )
    return unsupported


def _turn_table(verdicts: list[PromptVerdicts]) -> dict[str, dict]:
    by_language: dict[str, list[PromptVerdicts]] = {ALL_LANGUAGES: verdicts}
    for verdict in verdicts:
        by_language.setdefault(verdict.row.language, []).append(verdict)
    table = {}
    for language, group in by_language.items():
        summary = summarize(group)
        cell = {key: summary[key] for key in (*ACCURACY_KEYS, "num_prompts_scored", "num_instructions_scored")}
        cell["overall"] = sum(summary[key] for key in ACCURACY_KEYS) / len(ACCURACY_KEYS)
        table[language] = cell
    return table


def score_conversations(
    conversations: list[Conversation], responses_path: str | Path, allow_missing: bool, skipped_keys: set[str]
) -> tuple[dict, list[PromptVerdicts]]:
    """(per-turn results, one PromptVerdicts per judged turn) of the responses in `responses_path`."""
    responses = load_turn_responses(responses_path)
    kept_keys = {str(c.key) for c in conversations}
    missing = [c.key for c in conversations if str(c.key) not in responses]
    unmatched = sorted(line for key, (_, line) in responses.items() if key not in kept_keys | skipped_keys)
    skipped_lines = sorted(line for key, (_, line) in responses.items() if key in skipped_keys)
    if (missing or unmatched) and not allow_missing:
        problems = [f"{len(missing)} conversation(s) have no responses (keys {missing[:5]})"] if missing else []
        if unmatched:
            problems.append(
                f"{len(unmatched)} row(s) of {responses_path} match no conversation (lines {unmatched[:5]})"
            )
        raise ConstraintError("; ".join(problems) + ". Pass --allow-missing to score the conversations that match.")
    verdicts = []
    for conversation in conversations:
        answers, line = responses.get(str(conversation.key), (None, 0))
        if answers is not None and len(answers) != len(conversation.turns):
            raise ConstraintError(
                f"{where(str(responses_path), line, 'responses')}: {len(answers)} response(s) for conversation "
                f"{conversation.key!r}, which has {len(conversation.turns)} turn(s)"
            )
        for k, turn in enumerate(conversation.turns, start=1):
            if turn.judged is None:
                continue
            if answers is None:  # left out, as IFEval leaves out a prompt without a response
                verdicts.append(PromptVerdicts(turn.judged, False, None, None, turn=k))
                continue
            strict, loose = score_row(turn.judged, answers[k - 1])
            verdicts.append(PromptVerdicts(turn.judged, True, strict, loose, turn=k))
    if not any(v.scored for v in verdicts):
        raise ConstraintError(f"{responses_path}: no response matches a judged turn of a conversation")
    turns = sorted({v.turn for v in verdicts if v.scored})
    results = {
        "by_turn": {str(k): _turn_table([v for v in verdicts if v.turn == k and v.scored]) for k in turns},
        "num_conversations": len(conversations),
        "num_conversations_without_response": len(missing),
        "conversation_keys_without_response": missing,
        "num_responses_without_conversation": len(unmatched),
        "response_lines_without_conversation": unmatched,
        "num_responses_skipped": len(skipped_lines),
        "response_lines_skipped": skipped_lines,
    }
    return results, verdicts


def format_multi_turn(results: dict) -> str:
    """One line per turn and language: prompts, the four accuracies and their mean (Multi-IF's overall)."""
    lines = [f"{'turn':>4}  {'language':<8}  {'prompts':>7}  p_strict  p_loose  i_strict  i_loose  overall"]
    for turn, table in results["by_turn"].items():
        for language, cell in table.items():
            accuracies = "  ".join(f"{cell[key]:>7.4f}" for key in ACCURACY_KEYS)
            lines.append(
                f"{turn:>4}  {language:<8}  {cell['num_prompts_scored']:>7}  {accuracies}  {cell['overall']:.4f}"
            )
    if results["num_conversations_skipped_bad"] or results["num_turns_skipped_bad"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in results["skipped_bad_by_reason"].items())
        lines.append(
            f"skipped {results['num_conversations_skipped_bad']} conversation(s) and {results['num_turns_skipped_bad']}"
            f" turn(s) ({reasons}); {results['num_responses_skipped']} response row(s) skipped with them"
        )
    if results["num_conversations_without_response"]:
        lines.append(f"{results['num_conversations_without_response']} conversation(s) without responses (left out)")
    if results["num_responses_without_conversation"]:
        lines.append(f"{results['num_responses_without_conversation']} response row(s) without a conversation")
    return "\n".join(lines)


def write_generation_prompts(conversations: list[Conversation], path: Path) -> None:
    """The conversations as `rpo-jax generate` prompt rows, answered turn by turn with earlier answers in context."""
    rows = [
        {"key": c.key, "user_turns": [t.prompt for t in c.turns], **({"system": c.system} if c.system else {})}
        for c in conversations
    ]
    write_jsonl_atomic(path, rows)


def run_multi_turn_eval(settings, generate: Generator | None, layout: str) -> dict:
    """`rpo-jax eval --prompts CONVERSATIONS`: scores (generating first when `settings.responses` is None),
    prints the per-turn table, writes `--per-prompt` (one row per judged turn) and `--output`."""
    skipped = SkippedTurns()
    conversations = load_conversations(settings.prompts, skipped if settings.skip_bad else None, settings.limit)
    unsupported = _refuse_unsupported(conversations, settings.prompts, settings.skip_unsupported)
    if not any(t.judged for c in conversations for t in c.turns):
        raise ConstraintError(f"{settings.prompts}: no turn left to judge")
    with tempfile.TemporaryDirectory() as scratch:
        responses = settings.responses
        if responses is None:
            if generate is None:
                raise UserError("generating needs --checkpoint and --tokenizer (or pass --responses)")
            responses = Path(scratch) / "responses.jsonl"
            write_generation_prompts(conversations, Path(scratch) / "prompts.jsonl")
            generate(Path(scratch) / "prompts.jsonl", responses)
        results, verdicts = score_conversations(
            _without_unsupported(conversations, unsupported),
            responses,
            settings.allow_missing,
            {str(key) for key in skipped.conversations},
        )
    results.update(
        layout=layout,
        prompt_file=str(settings.prompts),
        unsupported_instruction_ids=unsupported,
        num_conversations_skipped_bad=len(skipped.conversations),
        conversation_keys_skipped_bad=skipped.conversations,
        num_turns_skipped_bad=len(skipped.turns),
        turns_skipped_bad=skipped.turns,
        skipped_bad_by_reason=skipped.by_reason(),
    )
    print(format_multi_turn(results))
    if settings.per_prompt:
        write_per_prompt(settings.per_prompt, verdicts)
    if settings.output:
        write_json_atomic(settings.output, results)
    return results


def _without_unsupported(conversations: list[Conversation], unsupported: list[str]) -> list[Conversation]:
    """The turns using `unsupported` ids (only under --skip-unsupported) are not judged."""
    if not unsupported:
        return conversations

    def keep(turn):
        uses = turn.judged is not None and set(turn.judged.instruction_id_list) & set(unsupported)
        return replace(turn, judged=None) if uses else turn

    return [replace(c, turns=tuple(keep(t) for t in c.turns)) for c in conversations]
