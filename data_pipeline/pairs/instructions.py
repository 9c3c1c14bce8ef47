"""The inputs of the pool recipes and their JSON form.

- `Instruction`: a constraint-annotated prompt (optional system prompt, history + final user turn, constraints).
  Every constraint applies to the final answer and records the message that states it (`ConstraintSpec.stated_in`:
  the system prompt, user turn k, or the final user turn); constraints stated over several turns add up, as in
  Multi-IF (the checks at turn 2 are turn 1's and turn 2's).
- `ResponseRecord`: one sampled response to an instruction, with its per-constraint verdicts once judged.

Every `from_json` raises `DataError` naming the file, line and field of the first problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from data_pipeline import constraints as cons
from data_pipeline.constraints import languages as cons_languages
from data_pipeline.pairs.constraint_specs import SYSTEM, ConstraintSpec, Location, constraint_error_reason
from data_pipeline.pairs.schema import DataError, Message, require_field, validate_prompt_messages


@dataclass(frozen=True)
class Instruction:
    """A prompt with its constraints. `turns` = history + final user message (the one whose answer is scored).

    `turns` either alternate user / assistant (the history is given) or hold only user messages: a conversation
    whose earlier assistant answers come with each response (`ResponseRecord.history`, as `rpo-jax generate` writes
    them for conversation prompts), filled in by `answered`.

    A task is a message without its constraint sentences, when the source keeps them apart: `task` for the final
    user turn, `earlier_tasks[k - 1]` for user turn k, `system_task` for the system prompt. It lets the RPO rewrite
    of that message state the (partly reversed) requirements without the original ones (see README, "Reversal").
    """

    id: str
    turns: tuple[Message, ...]
    constraints: tuple[ConstraintSpec, ...]
    system: str | None = None
    task: str | None = None
    source: str = ""
    line: int = 0
    system_task: str | None = None
    earlier_tasks: tuple[str | None, ...] = ()

    @property
    def final_user_message(self) -> str:
        return self.turns[-1].content

    @property
    def user_turn_count(self) -> int:
        return sum(t.role == "user" for t in self.turns)

    @property
    def awaits_answers(self) -> bool:
        """Several user turns and no assistant turn: the answers between them come with each response."""
        return self.user_turn_count > 1 and all(t.role == "user" for t in self.turns)

    def location(self, spec: ConstraintSpec) -> Location:
        """Where `spec` is stated: SYSTEM or a user turn number (the final turn's when the spec names none)."""
        return self.user_turn_count if spec.stated_in is None else spec.stated_in

    def task_at(self, location: Location) -> str | None:
        """The task (message without its constraints) of the message at `location`, if the source gave one."""
        if location == SYSTEM:
            return self.system_task
        if location == self.user_turn_count:
            return self.task
        return self.earlier_tasks[location - 1] if location <= len(self.earlier_tasks) else None

    def message_at(self, location: Location) -> str:
        if location == SYSTEM:
            return self.system or ""
        return [t for t in self.turns if t.role == "user"][location - 1].content

    def answered(self, history: tuple[str, ...]) -> Instruction:
        """The conversation with its earlier assistant turns filled in from `history` (one answer per earlier user
        turn); an instruction whose history is given is returned as is."""
        if not self.awaits_answers:
            return self
        turns: list[Message] = []
        for message, answer in zip(self.turns[:-1], history, strict=True):
            turns += [message, Message("assistant", answer)]
        return replace(self, turns=(*turns, self.turns[-1]))

    def prompt_messages(self, rewritten: Mapping[Location, str] | None = None) -> tuple[Message, ...]:
        """The prompt conversation, each message at a location in `rewritten` replaced by its new text."""
        if self.awaits_answers:
            raise ValueError(f"instruction {self.id!r}: its earlier user turns have no answers yet (see `answered`)")
        rewritten = rewritten or {}
        system = rewritten.get(SYSTEM, self.system)
        messages = [Message("system", system)] if system else []
        user_turn = 0
        for message in self.turns:
            if message.role == "user":
                user_turn += 1
                message = Message("user", rewritten.get(user_turn, message.content))
            messages.append(message)
        return tuple(messages)

    def to_json(self) -> dict:
        turns = [t.to_json() for t in self.turns]
        user_positions = [i for i, t in enumerate(self.turns) if t.role == "user"]
        for position, task in zip(user_positions, self.earlier_tasks, strict=False):
            if task is not None:
                turns[position]["task"] = task
        system_task = {} if self.system_task is None else {"system_task": self.system_task}
        return {
            "id": self.id,
            "system": self.system,
            "task": self.task,
            "turns": turns,
            "constraints": [c.to_json() for c in self.constraints],
            **system_task,
        }

    @classmethod
    def from_json(cls, obj: Any, source: str, line: int) -> Instruction:
        instruction_id = require_field(obj, "id", (str, int), source, line)
        raw_turns = require_field(obj, "turns", list, source, line)
        turns = tuple(Message.from_json(t, source, line, f"turns[{i}].") for i, t in enumerate(raw_turns))
        if any(t.role == "system" for t in turns):
            raise DataError(source, line, "turns", "put the system prompt in 'system', not in 'turns'")
        if len(turns) < 2 or any(t.role != "user" for t in turns):  # user turns only: answers come with responses
            validate_prompt_messages(turns, source, line, "turns")
        raw_constraints = require_field(obj, "constraints", list, source, line)
        specs = tuple(
            ConstraintSpec.from_json(c, source, line, f"constraints[{i}].") for i, c in enumerate(raw_constraints)
        )
        if not specs:
            raise DataError(source, line, "constraints", "must hold at least one constraint")
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise DataError(source, line, "constraints", f"constraint ids must be unique, got {ids}")
        system, task, system_task = obj.get("system"), obj.get("task"), obj.get("system_task")
        for name, value in (("system", system), ("task", task), ("system_task", system_task)):
            _optional_text(value, source, line, name)
        if system_task is not None and system is None:
            raise DataError(source, line, "system_task", "is the system prompt without its constraints: needs 'system'")
        user_tasks = _user_turn_tasks(raw_turns, turns, source, line)
        if task is not None and user_tasks[-1] not in (None, task):
            raise DataError(source, line, "task", "differs from the last turn's 'task'; give the final task once")
        _check_locations(specs, len(user_tasks), system, source, line)
        _refuse_unjudged_language(obj, specs, source, line)
        task = task if task is not None else user_tasks[-1]
        earlier = tuple(user_tasks[:-1]) if any(t is not None for t in user_tasks[:-1]) else ()
        return cls(str(instruction_id), turns, specs, system, task, source, line, system_task, earlier)

    @classmethod
    def from_ifeval_row(cls, obj: Any, source: str, line: int) -> Instruction:
        """An IFEval/IFBench row (`key`, `prompt`, `instruction_id_list`, `kwargs`); constraints are checkable."""
        key = require_field(obj, "key", (str, int), source, line)
        prompt = require_field(obj, "prompt", str, source, line)
        if not prompt.strip():
            raise DataError(source, line, "prompt", "is empty")
        try:
            parsed = cons.constraints_from_ifeval_row(obj, source, line)
        except cons.ConstraintError as err:
            raise DataError(
                source, line, "instruction_id_list/kwargs", str(err), reason=constraint_error_reason(err)
            ) from err
        if not parsed:
            raise DataError(source, line, "instruction_id_list", "is empty")
        specs = tuple(ConstraintSpec.from_constraint(f"c{i}", c) for i, c in enumerate(parsed))
        return cls(str(key), (Message("user", prompt),), specs, None, None, source, line)


def _optional_text(value: object, source: str, line: int, name: str) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise DataError(source, line, name, f"must be a non-empty string or null, got {value!r:.80}")


def _user_turn_tasks(raw_turns: list, turns: tuple[Message, ...], source: str, line: int) -> list[str | None]:
    """The optional `task` of each user turn, in order (an assistant turn has none)."""
    tasks = []
    for index, (raw, message) in enumerate(zip(raw_turns, turns, strict=True)):
        task = raw.get("task")
        _optional_text(task, source, line, f"turns[{index}].task")
        if message.role == "user":
            tasks.append(task)
        elif task is not None:
            raise DataError(source, line, f"turns[{index}].task", "only a user turn has a task")
    return tasks


def _check_locations(
    specs: tuple[ConstraintSpec, ...], user_turns: int, system: str | None, source: str, line: int
) -> None:
    """Each constraint is stated in a message the instruction has."""
    for index, spec in enumerate(specs):
        where = f"constraints[{index}].stated_in"
        if spec.stated_in == SYSTEM and system is None:
            raise DataError(source, line, where, "is 'system' but the instruction has no system prompt")
        if isinstance(spec.stated_in, int) and spec.stated_in > user_turns:
            message = f"is turn {spec.stated_in}; the instruction has {user_turns} user turn(s)"
            raise DataError(source, line, where, message)


def _refuse_unjudged_language(obj: dict, specs: tuple[ConstraintSpec, ...], source: str, line: int) -> None:
    """An instruction's optional `language` must be one that each of its checkable constraints judges
    (free-form constraints are judged by the LLM, in any language)."""
    language = obj.get("language", cons_languages.DEFAULT_LANGUAGE)
    if not isinstance(language, str) or not language.strip():
        raise DataError(source, line, "language", f"must be a language code like 'en', got {language!r:.80}")
    for index, spec in enumerate(specs):
        if spec.checkable and not cons_languages.judges(spec.type, language):
            languages = ", ".join(sorted(cons_languages.checker_languages(spec.type)))
            message = (
                f"{spec.type} is checked by rules for {languages} only, and this instruction is in {language!r}; "
                "it is not judged by another language's rules (skip such rows with --skip-bad)"
            )
            raise DataError(source, line, f"constraints[{index}].type", message, reason="unsupported_language")


@dataclass(frozen=True)
class ResponseRecord:
    """One response to `instruction_id`; `verdicts` maps constraint id -> satisfied, once judged. `history` holds
    the answers to the earlier user turns of a conversation that awaits them (`Instruction.awaits_answers`)."""

    instruction_id: str
    response_id: str
    text: str
    source: dict = field(default_factory=dict)
    verdicts: tuple[tuple[str, bool], ...] = ()
    history: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "instruction_id": self.instruction_id,
            "response_id": self.response_id,
            "text": self.text,
            "source": self.source,
            "verdicts": dict(self.verdicts),
        }
