"""Local files, the same way everywhere: the path rule, the shipped assets, content hashes and atomic writes.

Path settings and flags name local (or mounted) filesystem paths; URLs are refused, not misread. Every path is
opened with the local filesystem (pathlib / open / Orbax on a directory), where `gs://b/x` would silently become
a local folder `gs:/b/x`. Until URLs are supported (Orbax could write them, but metrics.jsonl appends,
report.png, TensorBoard events and the HF export would need staging + upload) they are refused:
`url_path_problem` for config fields (the training library's config), `local_path_arg` for command-line flags.

Outputs are written to a temporary sibling and renamed into place, so a reader never sees half a file.
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

# Data files shipped with the package (licences and provenance beside them, see assets/README.md).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

URL_PATHS_UNSUPPORTED = (
    "URLs are not supported yet: put the files on a path every host can read/write (e.g. a Filestore/NFS mount, "
    "or a gcsfuse mount for read-only inputs) and pass that path. gcsfuse renames directories non-atomically, so "
    "it is not safe for checkpoints (Orbax commits a step by renaming its temporary directory): use Filestore/NFS "
    "for train.output_dir on multi-host pods"
)
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def url_path_problem(path: str) -> str:
    """'' for a filesystem path; for a URL (gs://, s3://, http://, ...) why it is refused and what to do instead."""
    return f"{path}: {URL_PATHS_UNSUPPORTED}" if _URL.match(path) else ""


def local_path_arg(text: str) -> str:
    """argparse `type=` for path flags: a URL is a usage error (argparse names the flag)."""
    problem = url_path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Writes `data` to a temporary file beside `path` and renames it over `path` (parents created)."""
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


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: object, *, indent: int | None = 2, sort_keys: bool = True) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[object]) -> Path:
    """One JSON object per line (key order kept, non-ASCII kept)."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
