"""Files, the same way everywhere: the path rules, the shipped assets, content hashes and atomic writes.

Most path settings and flags take a local path or a `gs://` URL (`data_pipeline.storage`); the few that hand the
path to a reader of local files only (a tokenizer folder for transformers, a GGUF file read by mmap, a config
file) take `local_path_arg`, which refuses URLs with one line instead of misreading `gs://b/x` as a local folder
`gs:/b/x`.

Local outputs are written to a temporary sibling and renamed into place, so a reader never sees half a file; in
a bucket one file is one upload, which GCS makes visible only when complete (see `data_pipeline.storage`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.errors import DataFileError
from data_pipeline.storage import is_bucket_path, storage_path

# Data files shipped with the package (licences and provenance beside them, see assets/README.md).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

URL_PATHS_UNSUPPORTED = (
    "this path must be local (or mounted): what reads it opens local files only; copy it here first (e.g. "
    "`gcloud storage cp -r gs://... DIR`) and pass that path"
)
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def url_path_problem(path: str) -> str:
    """'' for a filesystem path; for a URL (gs://, s3://, http://, ...) why this path must be local."""
    return f"{path}: {URL_PATHS_UNSUPPORTED}" if _URL.match(path) else ""


def local_path_arg(text: str) -> str:
    """argparse `type=` for flags that must name a local path: a URL is a usage error (argparse names the flag);
    flags that also take gs:// use `data_pipeline.storage.storage_path_arg`."""
    problem = url_path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def not_utf8_message(path: str | Path, data: bytes, err: UnicodeDecodeError) -> str:
    """'FILE:LINE: not UTF-8: byte 0xff at column 1 ...', with the likely cause when the bytes show it."""
    line = data.count(b"\n", 0, err.start) + 1
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    cause = ""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        cause = " (the file starts with a UTF-16 byte-order mark)"
    return f"{path}:{line}: not UTF-8: byte {data[err.start]:#04x} at column {column}{cause}; save the file as UTF-8"


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file. Any other encoding (UTF-16, Latin-1 with bytes UTF-8 cannot hold) is a
    DataFileError naming the file, line and column of the first bad byte, never a decoding traceback."""
    data = storage_path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(not_utf8_message(path, data, err)) from err


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with storage_path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes):
    """Writes `data` to a temporary file beside `path` and renames it over `path` (parents created). In a bucket
    (gs://) it is one upload, which GCS makes visible only once complete: no temporary object is needed."""
    if is_bucket_path(path):
        target = storage_path(path)
        target.write_bytes(data)
        return target
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str):
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: object, *, indent: int | None = 2, sort_keys: bool = True):
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[object]):
    """One JSON object per line (key order kept, non-ASCII kept)."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
