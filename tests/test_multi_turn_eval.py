"""Multi-turn `rpo-jax eval` (issue 28): Multi-IF conversations (CSV and JSONL) and a system prompt with turns, judged
turn by turn on given responses against hand-computed accuracies; bad turns and conversations refused or skipped
and counted; and a tiny model answering 2 conversations x 2 turns from `--checkpoint`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from llama_hf_fixtures import params_and_hf_folder
from trainer_fixtures import TOKENIZER

from rpo_jax.cli import main
from rpo_jax.config.schema import ModelConfig

CHAT_TEMPLATE = Path(__file__).resolve().parents[1] / "data_pipeline/assets/chat_templates/llama3.jinja"


def multi_if_row(key, language, turns: list[tuple[str, list[str], list[dict]] | None]) -> dict:
    """A row as Multi-IF releases it: every cell JSON text, kwargs a list of JSON strings, "None" for no turn."""
    row = {"key": key, "language": language}
    for k, turn in enumerate(turns, start=1):
        prompt, ids, kwargs = turn if turn else (None, [], [])
        row[f"turn_{k}_prompt"] = json.dumps({"role": "user", "content": prompt}) if turn else "None"
        row[f"turn_{k}_instruction_id_list"] = json.dumps(ids)
        row[f"turn_{k}_kwargs"] = json.dumps([json.dumps(kw) for kw in kwargs])
    return row


COMMA, TITLE, BULLETS = "punctuation:no_comma", "detectable_format:title", "detectable_format:number_bullet_lists"
CONVERSATIONS = [
    multi_if_row(
        1001,
        "English",
        [
            ("Write about cats.", [COMMA], [{}]),
            ("Add a title.", [COMMA, TITLE], [{}, {}]),
            ("End with Bye.", [COMMA, TITLE, "startend:end_checker"], [{}, {}, {"end_phrase": "Bye."}]),
        ],
    ),
    multi_if_row(
        1002,
        "French",
        [
            ("Écris sur Paris.", [BULLETS], [{"num_bullets": 2}]),
            ("Sans virgule.", [BULLETS, COMMA], [{"num_bullets": 2}, {}]),
            None,
        ],
    ),
]
RESPONSES = [
    {
        "key": 1001,
        "responses": ["Cats purr and sleep.", "<<Cats>>\nCats purr, and sleep.", "<<Cats>>\nCats purr. Bye."],
    },
    {"key": 1002, "responses": ["* Seine\n* Louvre", "* Seine, fleuve\n* Louvre"]},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(name for row in rows for name in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, restval="None")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _eval(prompts: Path, responses: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--prompts", str(prompts), "--responses", str(responses), "--output", str(out), *extra])


@pytest.mark.parametrize("write", [_jsonl, _csv], ids=["jsonl", "csv"])
def test_multi_if_layout_scored_per_turn_and_language(tmp_path, capsys, write):
    prompts = write(tmp_path / f"multi_if.{write.__name__[1:]}", CONVERSATIONS)
    out, per_prompt = tmp_path / "out.json", tmp_path / "verdicts.jsonl"
    assert _eval(prompts, _jsonl(tmp_path / "r.jsonl", RESPONSES), out, "--per-prompt", str(per_prompt)) == 0
    results = json.loads(out.read_text())
    assert results["layout"] == "multi_if" and set(results["by_turn"]) == {"1", "2", "3"}
    turn1, turn2, turn3 = (results["by_turn"][k] for k in "123")
    assert set(turn1) == {"all", "en", "fr"} and set(turn3) == {"all", "en"}  # 1002 has no turn 3
    assert turn1["all"]["prompt_level_strict_acc"] == 1.0 and turn1["all"]["num_prompts_scored"] == 2
    # Turn 2: each conversation breaks the no-comma rule it carries over from turn 1 (strict), and passes once the
    # offending last line is dropped (IFEval's loose variants, as Multi-IF's gen_acc_loose).
    assert turn2["all"]["prompt_level_strict_acc"] == 0.0 and turn2["all"]["inst_level_strict_acc"] == 0.5
    assert turn2["all"]["prompt_level_loose_acc"] == 1.0 and turn2["fr"]["inst_level_strict_acc"] == 0.5
    assert turn2["all"]["overall"] == pytest.approx((0.0 + 1.0 + 0.5 + 1.0) / 4)  # Multi-IF's turn_2_..._overall
    assert turn3["en"]["inst_level_strict_acc"] == 1.0 and turn3["all"]["num_instructions_scored"] == 3
    rows = [json.loads(line) for line in per_prompt.read_text().splitlines()]
    # Keys as the file holds them (the CSV's are text); each judged turn is a row.
    assert [(str(r["key"]), r["turn"], r["language"]) for r in rows] == [
        ("1001", 1, "en"),
        ("1001", 2, "en"),
        ("1001", 3, "en"),
        ("1002", 1, "fr"),
        ("1002", 2, "fr"),
    ]
    assert rows[1]["instructions"] == [
        {"id": COMMA, "strict": False, "loose": True},
        {"id": TITLE, "strict": True, "loose": True},
    ]
    assert "turn  language" in capsys.readouterr().out


def test_system_prompt_constraints_are_judged_at_every_turn(tmp_path):
    conversation = {
        "key": "s1",
        "system": "Never use commas.",
        "system_instruction_id_list": [COMMA],
        "system_kwargs": [{}],
        "turns": [
            {"prompt": "Describe rain."},
            {"prompt": "Now in two bullets.", "instruction_id_list": [BULLETS], "kwargs": [{"num_bullets": 2}]},
        ],
    }
    prompts = _jsonl(tmp_path / "sys.jsonl", [conversation])
    responses = _jsonl(tmp_path / "r.jsonl", [{"key": "s1", "responses": ["Rain falls.", "* Rain\n* Wet, cold"]}])
    out = tmp_path / "out.json"
    assert _eval(prompts, responses, out) == 0
    results = json.loads(out.read_text())
    assert results["layout"] == "system_and_turns"
    assert results["by_turn"]["1"]["all"]["prompt_level_strict_acc"] == 1.0
    assert results["by_turn"]["2"]["all"]["inst_level_strict_acc"] == 0.5  # bullets kept, the system's rule broken


def test_bad_turns_and_conversations_refused_or_skipped_with_their_responses(tmp_path, capsys):
    chinese = multi_if_row(
        1003,
        "Chinese",
        [
            ("写五个字", ["length_constraints:number_words"], [{"num_words": 5, "relation": "at least"}]),
            ("用JSON", ["detectable_format:json_format"], [{}]),
        ],
    )
    broken = {**multi_if_row(1004, "English", [("Hi.", [COMMA], [{}])]), "turn_1_kwargs": "[{not json"}
    prompts = _jsonl(tmp_path / "m.jsonl", [*CONVERSATIONS, chinese, broken])
    extra = [{"key": 1003, "responses": ["你好", '{"a": 1}']}, {"key": 1004, "responses": ["Hi."]}]
    responses = _jsonl(tmp_path / "r.jsonl", RESPONSES + extra)
    out = tmp_path / "out.json"
    assert _eval(prompts, responses, out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "m.jsonl:4: field 'turn_1_kwargs': malformed JSON" in err
    _jsonl(prompts, [*CONVERSATIONS, chinese])
    assert _eval(prompts, responses, out) == 2
    err = capsys.readouterr().err
    assert "m.jsonl:3: field 'instruction_id_list[0]'" in err and "'zh'" in err and "turn 1" in err
    _jsonl(prompts, [*CONVERSATIONS, chinese, broken])
    assert _eval(prompts, responses, out, "--skip-bad") == 0
    results = json.loads(out.read_text())
    assert results["turns_skipped_bad"] == [{"key": 1003, "turn": 1, "reason": "unsupported_language"}]
    assert results["conversation_keys_skipped_bad"] == [1004] and results["response_lines_skipped"] == [4]
    assert results["num_responses_without_conversation"] == 0  # 1004's response is skipped with it
    assert results["by_turn"]["2"]["zh"]["prompt_level_strict_acc"] == 1.0  # its turn 2 is judged
    # A response list that does not fit the conversation is one line naming it.
    _jsonl(responses, [{**RESPONSES[0], "responses": ["One."]}, RESPONSES[1]])
    _jsonl(prompts, CONVERSATIONS)
    assert _eval(prompts, responses, out) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:1: field 'responses': 1 response(s) for conversation 1001, which has 3 turn(s)" in err


def test_tiny_model_answers_conversations_turn_by_turn(tmp_path, monkeypatch):
    """Both turns of both conversations from one load of the checkpoint."""
    from rpo_jax.generate import generation

    loads, load = [], generation.load_for_sampling
    monkeypatch.setattr(generation, "load_for_sampling", lambda *a, **k: loads.append(a) or load(*a, **k))
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(TOKENIZER, tokenizer)
    shutil.copy(CHAT_TEMPLATE, tokenizer / "chat_template.jinja")
    cfg = ModelConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
    )
    _, hf, _ = params_and_hf_folder(cfg, tmp_path / "model", seed=0, tokenizer_dir=tokenizer)
    two_turns = [multi_if_row(k, "English", [("Say hi.", [COMMA], [{}]), ("Again.", [COMMA], [{}])]) for k in (1, 2)]
    prompts = _jsonl(tmp_path / "m.jsonl", two_turns)
    out, per_prompt = tmp_path / "out.json", tmp_path / "v.jsonl"
    argv = ["eval", "--prompts", str(prompts), "--checkpoint", str(hf), "--tokenizer", str(tokenizer)]
    argv += ["--max-new-tokens", "2", "--batch-size", "2", "--output", str(out), "--per-prompt", str(per_prompt)]
    assert main(argv) == 0
    assert len(loads) == 1
    results = json.loads(out.read_text())
    assert [results["by_turn"][k]["all"]["num_prompts_scored"] for k in ("1", "2")] == [2, 2]
    assert [(r["key"], r["turn"]) for r in map(json.loads, per_prompt.read_text().splitlines())] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
