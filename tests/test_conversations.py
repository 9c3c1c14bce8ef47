"""Constraints where they are stated: system prompt, earlier turns, the final turn (issue #28). Reversal rewrites the
message that states each constraint; the checks at turn t add up over the turns (Multi-IF); pairs at a later turn
keep the earlier assistant turns as context, and only the final answer is scored; synthesized conversations and the
turn-by-turn order `rpo-jax generate` answers them in."""

from __future__ import annotations

import json

import pytest

from data_pipeline import constraints as cons
from data_pipeline.pairs.build import BuildSettings, build_pairs
from data_pipeline.pairs.instructions import Instruction
from data_pipeline.pairs.pool import OVERRIDE_HEADER, TASK_HEADER
from data_pipeline.pairs.readers import read_pairs
from data_pipeline.pairs.schema import DataError
from data_pipeline.pairs.synthesis import SynthesisSettings, synthesize
from data_pipeline.pairs.synthesis_conversations import checks_at_turn, conversation_prompt, spread
from data_pipeline.records.tokenize import DEFAULT_TOKENIZER_DIR, PairTokenizer, load_tokenizer, resolve_chat_template
from data_pipeline.records.truncation import TruncationSettings
from rpo_jax.generate.prompt_rows import Answer, PromptRow, answer_rounds

NO_COMMA = cons.Constraint.make("punctuation:no_comma")
POSTSCRIPT = cons.Constraint.make("detectable_content:postscript", postscript_marker="P.S.")
TITLE = cons.Constraint.make("detectable_format:title")


def spec(constraint_id: str, c: cons.Constraint, stated_in=None) -> dict:
    where = {} if stated_in is None else {"stated_in": stated_in}
    return {"id": constraint_id, "type": c.type, "params": c.kwargs, "text": cons.render(c), **where}


def stated(task: str, *constraints: cons.Constraint) -> str:
    numbered = "\n".join(f"{i}. {cons.render(c)}" for i, c in enumerate(constraints, start=1))
    return f"{task}\n\n{TASK_HEADER}\n{numbered}"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(tmp_path, instructions: list[dict], responses: list[dict], name="out"):
    settings = BuildSettings(
        recipe="rpo",
        input=str(write_jsonl(tmp_path / f"{name}_instructions.jsonl", instructions)),
        responses=str(write_jsonl(tmp_path / f"{name}_responses.jsonl", responses)),
        output=str(tmp_path / name),
        min_g=1,
    )
    build_pairs(settings)
    return {p.provenance["chosen"]["sample_id"]: p for p in read_pairs(str(tmp_path / name / "pairs.jsonl"))}


SYSTEM_ROW = {
    "id": "sys",
    "system": stated("You are terse.", NO_COMMA),
    "system_task": "You are terse.",
    "turns": [{"role": "user", "content": stated("Write about tea.", TITLE), "task": "Write about tea."}],
    "constraints": [spec("c0", NO_COMMA, "system"), spec("c1", TITLE)],
}


def test_a_system_prompt_constraint_is_reversed_in_the_system_prompt(tmp_path):
    follows = "<<Tea>>\nTea is calm and warm."
    comma = "<<Tea>>\nTea is calm, and warm."  # fails the system prompt's constraint only
    pairs = build(
        tmp_path, [SYSTEM_ROW], [{"key": "sys", "response": t, "sample_id": s} for s, t in ((0, follows), (1, comma))]
    )
    reversed_pair = pairs["1"].sequences[0].messages
    assert reversed_pair[0].role == "system"
    assert reversed_pair[0].content == f"You are terse.\n\n{TASK_HEADER}\n1. {cons.render(cons.reverse(NO_COMMA))}"
    assert reversed_pair[1].content == SYSTEM_ROW["turns"][0]["content"]  # the user turn states no failed constraint
    assert [m.content for m in pairs["0"].sequences[0].messages] == [
        SYSTEM_ROW["system"],
        SYSTEM_ROW["turns"][0]["content"],
    ]
    # Without the system prompt's task, its text stays and the override header lists the requirements after it.
    row = {k: v for k, v in SYSTEM_ROW.items() if k != "system_task"}
    pairs = build(
        tmp_path, [row], [{"key": "sys", "response": t, "sample_id": s} for s, t in ((0, follows), (1, comma))], "plain"
    )
    system = pairs["1"].sequences[0].messages[0].content
    assert system == f"{SYSTEM_ROW['system']}\n\n{OVERRIDE_HEADER}\n1. {cons.render(cons.reverse(NO_COMMA))}"


def test_a_turn_two_constraint_adds_to_turn_ones_and_a_failed_turn_one_constraint_rewrites_turn_one(tmp_path):
    """Multi-IF's cumulative checks: the answer at turn 2 is checked on turn 1's constraint and turn 2's; the history
    (turn 1 and its fixed answer) is context, and only turn 1's message changes when turn 1's constraint fails."""
    row = {
        "id": "two",
        "turns": [
            {"role": "user", "content": stated("Describe a river.", NO_COMMA), "task": "Describe a river."},
            {"role": "assistant", "content": "A river flows to the sea."},
            {"role": "user", "content": stated("Now a lake.", TITLE), "task": "Now a lake."},
        ],
        "constraints": [spec("c0", NO_COMMA, 1), spec("c1", TITLE, 2)],
    }
    instruction = Instruction.from_json(row, "rows.jsonl", 1)
    assert [instruction.location(s) for s in instruction.constraints] == [1, 2]
    answers = {0: "<<Lake>>\nA lake is still.", 1: "<<Lake>>\nA lake is still, and deep.", 2: "A lake is still."}
    pairs = build(tmp_path, [row], [{"key": "two", "response": t, "sample_id": s} for s, t in answers.items()])
    assert pairs["0"].provenance["chosen"]["verdicts"] == {"c0": True, "c1": True}
    assert pairs["1"].provenance["chosen"]["verdicts"] == {"c0": False, "c1": True}  # turn 1's check, at turn 2
    turn_one_reversed = pairs["1"].sequences[0].messages
    assert turn_one_reversed[0].content == stated("Describe a river.", cons.reverse(NO_COMMA))
    assert turn_one_reversed[1:] == instruction.prompt_messages()[1:]
    turn_two_reversed = pairs["2"].sequences[0].messages
    assert turn_two_reversed[:2] == instruction.prompt_messages()[:2]
    assert turn_two_reversed[2].content == stated("Now a lake.", cons.reverse(TITLE))
    assert all(p.sequences[0].response in answers.values() for p in pairs.values())


def test_a_conversation_awaiting_answers_takes_them_from_its_responses(tmp_path):
    """User turns only: each response carries the answers to the earlier turns (`responses`, as `rpo-jax generate`
    writes them); pools are per history, and a response with the wrong number of answers is one line."""
    row = {
        "id": "conv",
        "turns": [
            {"role": "user", "content": stated("Name a fruit.", NO_COMMA), "task": "Name a fruit."},
            {"role": "user", "content": stated("Describe it.", TITLE), "task": "Describe it."},
        ],
        "constraints": [spec("c0", NO_COMMA, 1), spec("c1", TITLE, 2)],
    }
    assert Instruction.from_json(row, "rows.jsonl", 1).awaits_answers
    history = "An apple."
    responses = [
        {"key": "conv", "sample_id": s, "response": t, "responses": [history, t]}
        for s, t in ((0, "<<Apple>>\nIt is red."), (1, "It is red, round."))
    ]
    pairs = build(tmp_path, [row], responses)
    messages = pairs["1"].sequences[0].messages
    assert [m.role for m in messages] == ["user", "assistant", "user"] and messages[1].content == history
    assert messages[0].content == stated("Name a fruit.", cons.reverse(NO_COMMA))
    bad = [{"key": "conv", "sample_id": 0, "response": "x", "responses": ["x"]}]
    with pytest.raises(
        DataError, match=r"bad_responses.jsonl:1: field 'responses': .* awaits the answers to the first 1"
    ):
        build(tmp_path, [row], bad, "bad")


def test_a_constraint_names_a_message_the_instruction_has():
    row = {**SYSTEM_ROW, "constraints": [spec("c0", NO_COMMA, 3)]}
    with pytest.raises(DataError, match="rows.jsonl:4: field 'constraints\\[0\\].stated_in': is turn 3"):
        Instruction.from_json(row, "rows.jsonl", 4)
    row = {"id": "x", "turns": [{"role": "user", "content": "hi"}], "constraints": [spec("c0", NO_COMMA, "system")]}
    with pytest.raises(DataError, match="no system prompt"):
        Instruction.from_json(row, "rows.jsonl", 4)


def test_the_chat_template_prefix_holds_across_turns_and_only_the_last_answer_is_scored(tmp_path):
    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    pair_tokenizer = PairTokenizer(tokenizer, resolve_chat_template(tokenizer, None)[0], TruncationSettings(4096))
    chat = [{"role": "system", "content": "Be brief."}]
    previous: list[int] = []
    for turn in range(1, 4):
        chat += [{"role": "user", "content": f"Question {turn}?"}, {"role": "assistant", "content": f"Answer {turn}."}]
        ids = pair_tokenizer.encode_text(pair_tokenizer.render(chat, False))
        asked = pair_tokenizer.encode_text(pair_tokenizer.render(chat[:-1], True))
        assert ids[: len(previous)] == previous and ids[: len(asked)] == asked, turn
        previous = ids
    follows, comma = "<<Lake>>\nStill water.", "<<Lake>>\nStill, deep water."
    pairs = build(
        tmp_path,
        [
            {
                "id": "two",
                "turns": [
                    {"role": "user", "content": stated("Describe a river.", NO_COMMA)},
                    {"role": "assistant", "content": "A river flows to the sea."},
                    {"role": "user", "content": stated("Now a lake.", TITLE)},
                ],
                "constraints": [spec("c0", NO_COMMA, 1), spec("c1", TITLE, 2)],
            }
        ],
        [{"key": "two", "response": t, "sample_id": s} for s, t in ((0, follows), (1, comma))],
    )
    for pair in pairs.values():
        example = pair_tokenizer.tokenize(pair, "pairs.jsonl", 1)
        for row, start, sequence in zip(example.rows, example.response_starts, pair.sequences, strict=True):
            scored = tokenizer.decode(row[start:], skip_special_tokens=True)
            assert scored.strip() == sequence.response and "A river flows" in tokenizer.decode(row[:start])


def test_synthesized_conversations_spread_constraints_over_the_system_prompt_and_turns():
    assert spread(5, 1, 3) == ["system", 1, 2, 3, 3]
    assert spread(4, 0, 3)[-1] == 3 and spread(1, 0, 3) == spread(1, 2, 3) == [3]  # the final turn always states one
    train, heldout, _ = synthesize(
        SynthesisSettings(num_train=4, num_heldout=2, turns=3, system_constraints=1, heldout_min_constraints=2)
    )
    for row in train + heldout:
        instruction = Instruction.from_json(row, "synth", 1)
        assert instruction.awaits_answers and instruction.user_turn_count == 3 and instruction.system_task
        assert [instruction.location(s) for s in instruction.constraints][0] == "system"
        for c in row["constraints"]:  # each constraint's sentence is in the message that states it
            message = row["system"] if c["stated_in"] == "system" else row["turns"][c["stated_in"] - 1]["content"]
            assert c["text"] in message
        assert len(checks_at_turn(row, 3)) == len(row["constraints"]) > len(checks_at_turn(row, 1))
        prompt = conversation_prompt(row)
        assert prompt["user_turns"] == [t["content"] for t in row["turns"]] and prompt["system"] == row["system"]
    # Default settings keep today's single-turn rows, byte for byte (the committed samples were made from them).
    single, _, _ = synthesize(SynthesisSettings(num_train=3, num_heldout=0))
    assert all(set(r) == {"id", "task", "turns", "constraints"} and len(r["turns"]) == 1 for r in single)


def test_generation_answers_turn_by_turn_with_its_own_earlier_answers():
    """Round r answers turn r of every conversation; the earlier turns once, the last `num_samples` times."""
    rows = [
        PromptRow("a", 1, ({"role": "system", "content": "S"},), tuple({"role": "user", "content": u} for u in "xyz")),
        PromptRow("b", 2, (), ({"role": "user", "content": "p"},)),
    ]
    seen = []

    def answer(jobs, batch_index):
        seen.append([(job.row.key, job.answers) for job in jobs])
        return [Answer(f"{job.row.key}{len(job.answers) + 1}.{job.sample_id}@{batch_index}", "eos", 1) for job in jobs]

    same_length = lambda job: 1  # batches in file order (test_generation_batching: longest first)
    results = list(answer_rounds(rows, num_samples=2, batch_size=2, answer=answer, prompt_length=same_length))
    assert seen[0] == [("a", ()), ("b", ())] and seen[1] == [("b", ())]  # round 1: a's turn 1 once, b's final twice
    assert seen[2] == [("a", ("a1.0@0",))] and seen[3] == [("a", ("a1.0@0", "a2.0@2"))] * 2
    assert [(job.row.key, job.sample_id) for job, _ in results] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    job, final = results[0]
    assert job.row.messages(job.answers)[-2:] == [
        {"role": "assistant", "content": "a2.0@2"},
        {"role": "user", "content": "z"},
    ]
    assert final.text == "a3.0@3"


def test_the_experiments_multiturn_suite_judges_each_turn_on_the_constraints_stated_so_far(tmp_path):
    from experiments.multiturn import turn_verdicts

    row = {
        "id": "c",
        "system": stated("Be brief.", NO_COMMA),
        "turns": [{"role": "user", "content": stated("A title.", TITLE)}, {"role": "user", "content": "And a P.S."}],
        "constraints": [spec("c0", NO_COMMA, "system"), spec("c1", TITLE, 1), spec("c2", POSTSCRIPT, 2)],
    }
    write_jsonl(tmp_path / "answers.jsonl", [{"key": "c", "responses": ["<<T>>\nNo commas here.", "x, y"]}])
    first, second = turn_verdicts([row], tmp_path / "answers.jsonl")
    assert (first["turn"], first["instruction_ids"], first["strict"]) == (1, [NO_COMMA.type, TITLE.type], [True, True])
    assert second["instruction_ids"] == [NO_COMMA.type, TITLE.type, POSTSCRIPT.type]
    assert second["strict"] == [False, False, False] and second["has_response"]
