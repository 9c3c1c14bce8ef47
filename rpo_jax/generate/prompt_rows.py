"""The prompts file of `rpo-jax generate` and the order its turns are answered in.

One JSON object per line, with `key` and one of:
- `prompt`: one user message (fed as-is with `--raw-prompt`);
- `messages`: a chat (`[{role, content}, ...]`, its history fixed) whose last message is answered;
- `user_turns` (a list of user messages) and optionally `system`: a conversation, answered turn by turn with the
  model's own earlier answers in context. The earlier turns are answered once per conversation and the last one
  `--num-samples` times on that shared history, so the samples answer one prompt and RPO can pair them.

Generation runs in rounds: round r answers turn r of every row that has one, in batches (`answer_rounds`). A file
of single-turn rows is one round. Within a round the jobs are batched longest prompt first (a stable sort), so each
batch holds prompts of similar length and pads them little; answers come back in file order whatever the batching.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import UserError, malformed_json
from data_pipeline.files import read_utf8


class PromptFileError(UserError, ValueError):
    """A prompts file row is malformed (the message names file, line and field)."""


@dataclass(frozen=True)
class PromptRow:
    """One row: the messages before the turns answered here (`head`: system prompt, given history) and the user
    messages answered in order (`user_turns`: one, except for conversations)."""

    key: object
    line: int
    head: tuple[dict, ...]
    user_turns: tuple[dict, ...]
    raw_prompt: str | None = None  # `prompt` as given, for --raw-prompt
    conversation: bool = False

    @property
    def prompt(self) -> str:
        """The last user message (what `build-pairs` matches a response by when it has no key)."""
        user = [m["content"] for m in (*self.head, *self.user_turns) if m["role"] == "user"]
        return user[-1] if user else ""

    def messages(self, answers: tuple[str, ...]) -> list[dict]:
        """The chat that asks turn len(answers) + 1, after `answers` to the turns before it."""
        chat = list(self.head)
        for turn, answer in zip(self.user_turns, answers, strict=False):
            chat += [turn, {"role": "assistant", "content": answer}]
        return [*chat, self.user_turns[len(answers)]]


def read_prompts(path: str | Path, raw: bool) -> list[PromptRow]:
    if not Path(path).is_file():
        raise PromptFileError(f"{path}: no such prompts file (--prompts)")
    rows = []
    with io.StringIO(read_utf8(path), newline=None) as f:  # not UTF-8: one line naming the byte
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                raise PromptFileError(f"{path}:{line_no}: empty line")
            try:
                obj = json.loads(line.rstrip("\r\n"))  # a row cut short breaks at its end, not on "line 2"
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{line_no}: {malformed_json(e)}") from e
            if not isinstance(obj, dict) or "key" not in obj:
                raise PromptFileError(f"{path}:{line_no}: field 'key': missing")
            rows.append(_row(obj, raw, f"{path}:{line_no}", line_no))
    if not rows:
        raise PromptFileError(f"{path}: no prompts")
    return rows


def _is_message_list(value: object) -> bool:
    def is_message(m: object) -> bool:
        return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)

    return isinstance(value, list) and bool(value) and all(is_message(m) for m in value)


def _row(obj: dict, raw: bool, where: str, line_no: int) -> PromptRow:
    key = obj["key"]
    if isinstance(obj.get("prompt"), str):
        return PromptRow(key, line_no, (), ({"role": "user", "content": obj["prompt"]},), obj["prompt"])
    if raw:
        raise PromptFileError(f"{where}: field 'prompt': missing or not a string (--raw-prompt takes `prompt` rows)")
    if "messages" in obj:
        if not _is_message_list(obj["messages"]):
            raise PromptFileError(f"{where}: field 'messages': must be a non-empty list of {{role, content}} strings")
        return PromptRow(key, line_no, tuple(obj["messages"][:-1]), (obj["messages"][-1],))
    if "user_turns" in obj:
        turns, system = obj["user_turns"], obj.get("system")
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
            raise PromptFileError(f"{where}: field 'user_turns': must be a non-empty list of strings")
        if system is not None and not isinstance(system, str):
            raise PromptFileError(f"{where}: field 'system': must be a string")
        head = ({"role": "system", "content": system},) if system else ()
        return PromptRow(key, line_no, head, tuple({"role": "user", "content": t} for t in turns), conversation=True)
    raise PromptFileError(f"{where}: field 'prompt': missing or not a string (and no 'messages' or 'user_turns')")


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str  # "eos", "stop_string" or "length"
    num_tokens: int


@dataclass(frozen=True)
class Job:
    """One sequence to generate: turn `len(answers) + 1` of `row`, after its earlier `answers`."""

    row: PromptRow
    sample_id: int
    answers: tuple[str, ...]

    @property
    def final(self) -> bool:
        return len(self.answers) == len(self.row.user_turns) - 1


def count_jobs(rows: list[PromptRow], num_samples: int) -> int:
    return sum(len(row.user_turns) - 1 + num_samples for row in rows)


def answer_rounds(
    rows: list[PromptRow],
    num_samples: int,
    batch_size: int,
    answer: Callable[[list[Job], int], list[Answer]],
    prompt_length: Callable[[Job], int],
) -> Iterator[tuple[Job, Answer]]:
    """(job, answer) for every final turn, rows in file order and samples in order within a row.

    `answer(jobs, batch_index)` answers one batch of at most `batch_size` jobs; batch indices count on across
    rounds, so each batch of a run gets its own random key. `prompt_length(job)` (its prompt's tokens) orders a
    round's jobs into batches, longest first: a too-large program then fails at the first batch, not the last."""
    answers: list[tuple[str, ...]] = [() for _ in rows]
    finished: dict[tuple[int, int], tuple[Job, Answer]] = {}
    batch_index = 0
    for turn in range(max(len(row.user_turns) for row in rows)):
        jobs = [
            (i, Job(row, sample, answers[i]))
            for i, row in enumerate(rows)
            if len(row.user_turns) > turn
            for sample in range(num_samples if turn == len(row.user_turns) - 1 else 1)
        ]
        jobs.sort(key=lambda indexed_job: -prompt_length(indexed_job[1]))  # stable: equal lengths keep file order
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            results = answer([job for _, job in batch], batch_index)
            batch_index += 1
            for (i, job), result in zip(batch, results, strict=True):
                if job.final:
                    finished[(i, job.sample_id)] = (job, result)
                else:
                    answers[i] = (*answers[i], result.text)
    for index in sorted(finished):
        yield finished[index]
