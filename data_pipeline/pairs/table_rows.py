"""Preference rows stored as Arrow tables: a Parquet file, or a Hugging Face `datasets` folder written by
`Dataset.save_to_disk` (its `state.json` lists Arrow IPC stream files), read with pyarrow alone, so an import needs
neither `datasets` nor a network.

Rows are numbered from 1 across the folder's files, as `readers.iter_json_rows` numbers the lines of a JSONL file,
so a bad row is named `<path>:<row>: field ...` the same way. A folder of several splits (`DatasetDict`) is refused
with their names, unless it holds only one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.errors import DataFileError
from data_pipeline.files import file_sha256

PARQUET_SUFFIX = ".parquet"
HF_STATE, HF_SPLITS = "state.json", "dataset_dict.json"
_BATCH_ROWS = 1024


def is_table_input(path: str | Path) -> bool:
    """A Parquet file or a folder (a `datasets` folder, or something to be refused as one)."""
    return Path(path).is_dir() or str(path).endswith(PARQUET_SUFFIX)


def iter_table_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(row number, row as a dict) for each row of a Parquet file or a `save_to_disk` folder."""
    import pyarrow as pa

    arrow = Path(path).is_dir()
    row = 0
    for file in arrow_files(path) if arrow else [Path(path)]:
        try:
            for batch in _record_batches(file, arrow):
                for values in batch.to_pylist():
                    row += 1
                    yield row, values
        except (pa.ArrowException, OSError) as err:
            kind = "Arrow" if arrow else "Parquet"
            raise DataFileError(f"{file}: not a readable {kind} file ({' '.join(str(err).split())})") from err


def _record_batches(file: Path, arrow: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not arrow:
        yield from pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS)
        return
    with pa.OSFile(str(file), "rb") as source:
        yield from pa.ipc.open_stream(source)


def arrow_files(folder: str | Path) -> list[Path]:
    """The Arrow files of a `save_to_disk` folder, in row order (`state.json`'s `_data_files`)."""
    folder = Path(folder)
    if (folder / HF_SPLITS).is_file():
        splits = json.loads((folder / HF_SPLITS).read_text()).get("splits", [])
        if len(splits) != 1:
            raise DataFileError(
                f"{folder} holds the splits {', '.join(splits)} of a DatasetDict: pass the folder of one, e.g. "
                f"{folder / (splits[0] if splits else 'train')}"
            )
        folder = folder / splits[0]
    if not (folder / HF_STATE).is_file():
        raise DataFileError(
            f"{folder}: a folder, but not one written by `datasets` save_to_disk (no {HF_STATE}); pass a JSON/JSONL "
            f"file, a {PARQUET_SUFFIX} file, or such a folder"
        )
    state = json.loads((folder / HF_STATE).read_text())
    return [folder / entry["filename"] for entry in state.get("_data_files", [])]


def input_sha256(path: str | Path) -> str:
    """The file's sha256, or for a folder sha256 over each file's relative name and sha256 (stats.json's inputs)."""
    if not Path(path).is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()
