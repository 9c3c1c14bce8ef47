"""Data errors a person can read and act on: a byte that is not UTF-8 is named by file and line (and counted with
--skip-bad), a pair whose chosen equals its rejected is refused (counted with --skip-bad), a TRL-style row gets a
pointer to `build-pairs --recipe dpo`, a missing held-out pair file is named by its own setting, and the CLI
prints each as one line with exit code 2 and no traceback (`--debug` shows it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.errors import UserError
from data_pipeline.pairs.readers import BadRows, iter_json_rows
from data_pipeline.pairs.schema import DataError
from data_pipeline.records.build import build_shards, dropped_text
from data_pipeline.records.prepare import ensure_shards
from data_pipeline.records.tokenize import DEFAULT_TOKENIZER_DIR
from data_pipeline.records.truncation import TruncationSettings

ROOT = Path(__file__).resolve().parents[1]
PAIRS = Path(__file__).parent / "assets" / "pairs_small.jsonl"
SETTINGS = TruncationSettings(4096)


def pair_lines(recipe: str = "rpo", n: int = 3) -> list[str]:
    return [line for line in PAIRS.read_text(encoding="utf-8").splitlines() if f'"recipe": "{recipe}"' in line][:n]


def identical_pair() -> str:
    row = json.loads(pair_lines(n=1)[0])
    row["sequences"][1] = row["sequences"][0]
    return json.dumps(row, ensure_ascii=False)


def write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def rpo_jax(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rpo_jax.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_non_utf8_line_is_named_and_counted_with_skip_bad(tmp_path):
    good = pair_lines()
    path = write(tmp_path / "pairs.jsonl", [good[0], good[1][:-20].encode() + b"\xff\xfe" + good[1][-20:].encode()])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: field '<text>': not UTF-8: byte 0xff")):
        list(iter_json_rows(str(path)))
    bad = BadRows()
    assert [line for line, _ in iter_json_rows(str(path), bad)] == [1]
    assert bad.counts == {"not_utf8": 1}
    manifest = build_shards(path, DEFAULT_TOKENIZER_DIR, tmp_path / "shards", SETTINGS, skip_bad=True)
    assert manifest["counts"]["input_rows"] == 2 and manifest["counts"]["examples"] == 1
    assert manifest["counts"]["bad_rows"]["by_reason"] == {"not_utf8": 1}


def test_malformed_json_is_named_by_file_line_and_column(tmp_path):
    """JSONL rows and a top-level JSON list alike: the column where the JSON breaks is in the one-line message."""
    good = pair_lines(n=1)[0]
    jsonl = write(tmp_path / "pairs.jsonl", [good, '{"recipe": "rpo",, "x": 1}'])
    with pytest.raises(DataError, match=re.escape(f"{jsonl}:2: field '<json>': malformed JSON at column 18: Expect")):
        list(iter_json_rows(str(jsonl)))
    listed = write(tmp_path / "pairs.json", ["[", good + ",", '  {"recipe": "rpo" "x": 1}', "]"])
    with pytest.raises(DataError, match=re.escape(f"{listed}:3: field '<json>': malformed JSON at column 20: Expect")):
        list(iter_json_rows(str(listed)))


def test_nothing_dropped_reads_dropped_0(tmp_path):
    assert dropped_text({}) == "0"
    both = {"sequence_too_long": 3, "prompt_too_long": 2}
    assert dropped_text(both) == "5 (prompt_too_long: 2, sequence_too_long: 3)"
    empty = write(tmp_path / "pairs.jsonl", [])
    with pytest.raises(DataError, match=re.escape("no examples left to write (0 input rows, dropped 0)")):
        build_shards(empty, DEFAULT_TOKENIZER_DIR, tmp_path / "shards", SETTINGS)


def test_chosen_equal_to_rejected_is_refused_and_counted_with_skip_bad(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [*pair_lines(n=2), identical_pair()])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'sequences[1]': tokenizes to the same tokens")):
        build_shards(path, DEFAULT_TOKENIZER_DIR, tmp_path / "shards", SETTINGS)
    manifest = build_shards(path, DEFAULT_TOKENIZER_DIR, tmp_path / "shards", SETTINGS, skip_bad=True)
    assert manifest["counts"]["examples"] == 2
    assert manifest["counts"]["bad_rows"]["by_reason"] == {"identical_sequences": 1}
    assert manifest["counts"]["dropped"] == {"bad_row:identical_sequences": 1}


def test_identical_after_truncation_is_refused(tmp_path):
    """keep_start can cut two different responses down to the same tokens: that pair carries no preference."""
    row = json.loads(pair_lines(n=1)[0])
    shared = "word " * 300
    row["sequences"][0]["response"] = shared + "first ending"
    row["sequences"][1]["response"] = shared + "second ending"
    path = write(tmp_path / "pairs.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match="identical_sequences|same tokens"):
        build_shards(path, DEFAULT_TOKENIZER_DIR, tmp_path / "shards", TruncationSettings(256, "keep_start"))


def test_trl_preference_row_points_to_build_pairs(tmp_path):
    path = write(tmp_path / "prefs.jsonl", [json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."})])
    with pytest.raises(DataError, match=re.escape("`rpo-jax build-pairs --recipe dpo --input")):
        build_shards(path, DEFAULT_TOKENIZER_DIR, tmp_path / "shards", SETTINGS)


def test_missing_eval_pairs_file_is_named_by_its_setting(tmp_path):
    with pytest.raises(UserError, match=re.escape("data.eval_pairs_path=")):
        ensure_shards(
            tmp_path / "nope.jsonl", DEFAULT_TOKENIZER_DIR, tmp_path / "eval", SETTINGS, setting="data.eval_pairs_path"
        )


def test_tokenize_cli_prints_one_line_exit_2_and_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [pair_lines(n=1)[0].encode()[:-30] + b"\xe9" + b"x" * 30])
    args = ["tokenize", "--input", str(path), "--tokenizer", str(DEFAULT_TOKENIZER_DIR), "--max-length", "512"]
    result = rpo_jax(*args, "--output", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"rpo-jax tokenize: error: {path}:1: field '<text>': not UTF-8: byte 0xe9 at column "
        f"{len(pair_lines(n=1)[0].encode()) - 29}"
    ]
    skipped = rpo_jax(*args, "--output", str(tmp_path / "out"), "--skip-bad")
    assert skipped.returncode == 2 and "no examples left to write" in skipped.stderr  # counted, then nothing left
    debug = rpo_jax(*args, "--output", str(tmp_path / "out2"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
