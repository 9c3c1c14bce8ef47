"""`build-pairs --recipe dpo` imports from JSONL, Parquet and a Hugging Face `datasets` folder alike, and drops
(and counts) the rows whose scores tie instead of training them as preferences."""

from __future__ import annotations

import argparse
import json

import pytest

from data_pipeline.errors import DataFileError, UserError
from data_pipeline.pairs import cli as build_pairs

# AutoIF-style scored rows, as the issue met them: 5 of 8 with equal scores, one whose chosen scores lower.
SCORES = [(9, 9), (7, 7), (8.5, 3.0), (10, 10), (6, 6), (4, 7), (1, 1), (5, 2)]
ROWS = [
    {
        "prompt": f"Write {i + 2} sentences about rivers.",
        "chosen": f"Rivers move water. ({i})",
        "rejected": f"Mountains are tall. ({i})",
        "score_chosen": chosen,
        "score_rejected": rejected,
    }
    for i, (chosen, rejected) in enumerate(SCORES)
]


def build(tmp_path, source, name: str, *extra: str) -> tuple[list[dict], dict]:
    parser = argparse.ArgumentParser()
    build_pairs.add_arguments(parser)
    out = tmp_path / name
    args = ["--recipe", "dpo", "--input", str(source), "--output", str(out), *extra]
    assert build_pairs.run(parser.parse_args(args)) == 0
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    return pairs, json.loads((out / "stats.json").read_text())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def save_to_disk(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet, save_to_disk], ids=["jsonl", "parquet", "datasets"])
def test_each_format_imports_the_same_pairs_and_drops_ties(tmp_path, writer):
    name = {"write_jsonl": "rows.jsonl", "write_parquet": "rows.parquet", "save_to_disk": "rows_dataset"}
    source = writer(tmp_path / name[writer.__name__], ROWS)
    pairs, stats = build(tmp_path, source, "out")
    assert stats["ties"] == 5
    assert stats["rows"]["by_outcome"] == {"emitted": 2, "ties": 5, "chosen_scored_lower": 1}
    assert [p["sequences"][0]["response"] for p in pairs] == ["Rivers move water. (2)", "Rivers move water. (7)"]
    assert [p["provenance"]["scores"] for p in pairs] == [[8.5, 3.0], [5.0, 2.0]]
    assert [p["provenance"]["line"] for p in pairs] == [3, 8]  # the row of the input, numbered from 1
    assert list(stats["settings"]["inputs"]) == [str(source)]


def test_a_bad_row_of_a_parquet_file_is_named_by_row_and_field(tmp_path):
    rows = [dict(r) for r in ROWS[2:4]]
    rows[1]["rejected"] = None
    source = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(UserError, match=rf"^bad input: {source}:2: field 'rejected': must be a list"):
        build(tmp_path, source, "out")
    _, stats = build(tmp_path, source, "skipped", "--skip-bad")
    assert stats["rows"]["by_outcome"] == {"emitted": 1, "bad_input": 1}
    rows[1]["rejected"], rows[1]["score_rejected"] = "No.", "high"
    with pytest.raises(UserError, match=r":2: field 'score_rejected': must be a finite number, got 'high'"):
        build(tmp_path, write_jsonl(tmp_path / "text_score.jsonl", rows), "out2")


def test_a_datasets_folder_of_several_splits_is_refused_naming_them(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train_prefs": rows, "test_prefs": rows}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataFileError, match="holds the splits train_prefs, test_prefs of a DatasetDict"):
        build(tmp_path, tmp_path / "dict", "out")
    pairs, stats = build(tmp_path, tmp_path / "dict" / "train_prefs", "split")
    assert len(pairs) == 2 and stats["ties"] == 5
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataFileError, match="not one written by `datasets` save_to_disk"):
        build(tmp_path, tmp_path / "plain", "out3")
