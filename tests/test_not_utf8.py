"""A text file that is not UTF-8 (saved as UTF-16, or Latin-1 with bytes UTF-8 cannot hold) is one line naming the
file, exit 2, in every command that reads one (issue 28) - never a decoding traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_fixtures import DEFAULT_PAIRS, TOKENIZER

from rpo_jax.cli import main

IFEVAL_ROW = {"key": 1, "prompt": "Café au lait, s'il vous plaît.", "instruction_id_list": [], "kwargs": []}
RESPONSE_ROW = {"prompt": IFEVAL_ROW["prompt"], "response": "Très bien."}
DPO_ROW = {"prompt": "Café?", "chosen": "Oui, très bon.", "rejected": "Non."}


def utf16(path: Path, row: dict) -> Path:
    path.write_bytes(json.dumps(row, ensure_ascii=False).encode("utf-16") + "\n".encode("utf-16-le"))
    return path


def latin1(path: Path, row: dict) -> Path:
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("latin-1"))  # "é" is the byte 0xe9
    return path


def utf8(path: Path, row: dict) -> Path:
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _commands(tmp: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (argv, the file that is not UTF-8)."""
    prompts16 = utf16(tmp / "prompts16.jsonl", IFEVAL_ROW)
    responses1 = latin1(tmp / "responses1.jsonl", RESPONSE_ROW)
    conversations16 = tmp / "multi_if16.csv"
    conversations16.write_bytes("key,language,turn_1_prompt\n1,French,x\n".encode("utf-16"))
    template1 = tmp / "template.jinja"
    template1.write_bytes("{{ messages }} é".encode("latin-1"))
    pairs = str(DEFAULT_PAIRS / "eval_pairs.jsonl")
    return {
        "eval prompts": (["eval", "--prompts", str(prompts16), "--responses", str(responses1)], prompts16),
        "eval responses": (
            ["eval", "--prompts", str(utf8(tmp / "p.jsonl", IFEVAL_ROW)), "--responses", str(responses1)],
            responses1,
        ),
        "eval conversations": (
            ["eval", "--prompts", str(conversations16), "--responses", str(responses1)],
            conversations16,
        ),
        "generate": (
            ["generate", "--checkpoint", str(tmp), "--tokenizer", str(TOKENIZER), "--prompts", str(prompts16)]
            + ["--output", str(tmp / "out.jsonl")],
            prompts16,
        ),
        "build-pairs rpo": (
            ["build-pairs", "--recipe", "rpo", "--input", str(prompts16), "--responses", str(responses1)]
            + ["--output", str(tmp / "bp")],
            prompts16,
        ),
        "build-pairs dpo import": (
            ["build-pairs", "--recipe", "dpo", "--input", str(latin1(tmp / "dpo1.jsonl", DPO_ROW))]
            + ["--output", str(tmp / "dpo")],
            tmp / "dpo1.jsonl",
        ),
        "tokenize pairs": (
            ["tokenize", "--input", str(utf16(tmp / "pairs16.jsonl", DPO_ROW)), "--tokenizer", str(TOKENIZER)]
            + ["--output", str(tmp / "shards"), "--max-length", "64"],
            tmp / "pairs16.jsonl",
        ),
        "tokenize chat template": (
            ["tokenize", "--input", pairs, "--tokenizer", str(TOKENIZER), "--output", str(tmp / "shards2")]
            + ["--max-length", "64", "--chat-template", str(template1)],
            template1,
        ),
    }


COMMANDS = ["eval prompts", "eval responses", "eval conversations", "generate", "build-pairs rpo"]
COMMANDS += ["build-pairs dpo import", "tokenize pairs", "tokenize chat template"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys, name):
    commands = _commands(tmp_path)
    assert set(commands) == set(COMMANDS)
    argv, bad_file = commands[name]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(bad_file) in err and "not UTF-8" in err, err
