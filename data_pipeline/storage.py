"""Paths that may name a Google Cloud Storage bucket (`gs://bucket/folder`) as well as a local folder.

`storage_path(text)` is the one door: a local path stays a `pathlib.Path` (everything local works exactly as it
always did), a `gs://` URL becomes an `etils.epath.Path`, the layer Orbax and Grain use. Without TensorFlow
installed (it never is here), epath sends `gs://` through fsspec's `gcsfs`; Orbax writes array data through
TensorStore's own GCS driver. Other URL schemes are refused with one line.

Object stores have no atomic rename, so nothing written to a bucket relies on one:
  - one object is one upload: GCS makes an object visible only once its upload completes, so a single file
    (report.png, the whole of metrics.jsonl rewritten, a manifest) is seen whole or not at all;
  - a folder (an HF export, a params checkpoint) is uploaded file by file with its marker file last
    (`upload_folder(..., marker=...)`), and readers take the folder only through that marker: `config.json` for
    an HF folder (transformers reads nothing without it), `model_config.json` for a params checkpoint;
  - Orbax commits a step checkpoint on GCS by writing `commit_success.txt` into it last (its
    CommitFileTemporaryPath) and lists only committed steps; resume names and sets aside any other.

`STORAGE_EMULATOR_HOST` (read by gcsfs and Google's own clients) points every layer at an emulator:
`use_storage_emulator` maps it onto the layers that have their own setting, in this one place.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.errors import OutputExistsError

GCS_PREFIX = "gs://"
CHUNK = 64 << 20  # bytes per read when copying between local disk and a bucket
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
OTHER_URLS_UNSUPPORTED = (
    "only gs:// URLs (Google Cloud Storage) are supported; for another store mount it (e.g. with s3fs-fuse) and "
    "pass the mounted path"
)


def is_bucket_path(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(GCS_PREFIX)


def storage_path_problem(path: str) -> str:
    """'' for a local path or a `gs://bucket/...` URL; otherwise why the path is refused."""
    if is_bucket_path(path):
        return "" if path[len(GCS_PREFIX) :].split("/")[0] else f"{path}: a gs:// URL needs a bucket name"
    return f"{path}: {OTHER_URLS_UNSUPPORTED}" if _URL.match(path) else ""


def storage_path_arg(text: str) -> str:
    """argparse `type=` for flags that take a local path or a gs:// URL (argparse names the flag on error)."""
    problem = storage_path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def use_storage_emulator() -> None:
    """When STORAGE_EMULATOR_HOST is set, points the layers with their own endpoint setting at it too. Settings
    already made by hand win. Called before any GCS client is made (`storage_path`, the command line)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host in ("", "default"):
        return
    url = host if "://" in host else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)  # Orbax's array data goes through TensorStore
    # An emulator takes any token; without one, TensorStore and google.auth look for real credentials and ask
    # the GCE metadata server, which does not exist off Google Cloud (seconds of timeouts per client).
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    os.environ.setdefault("NO_GCE_CHECK", "true")
    os.environ.setdefault("FSSPEC_GCS_TOKEN", "anon")  # gcsfs: no credentials to look for (fsspec reads it at import)
    # gcsfs's zonal / hierarchical-namespace detection calls the Storage Control API, which emulators lack.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def storage_path(path: str | os.PathLike):
    """`path` as a `pathlib.Path` (local) or an `etils.epath.Path` (gs://). Never call `.absolute()` or
    `.resolve()` on the latter (it would turn into a local path): use `absolute_storage_path`."""
    if not is_bucket_path(path):
        return Path(path)
    use_storage_emulator()
    from etils import epath

    return epath.Path(os.fspath(path))


def absolute_storage_path(path: str | os.PathLike):
    """A local path made absolute; a gs:// URL as it is (it has no current directory)."""
    return storage_path(path) if is_bucket_path(path) else Path(path).absolute()


def remove_tree(path) -> None:
    """Removes a folder (local or in a bucket) or a file; nothing when it does not exist."""
    if is_bucket_path(path):
        path = storage_path(path)
        if path.is_dir():
            path.rmtree(missing_ok=True)
        elif path.exists():
            path.unlink(missing_ok=True)
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def move_tree(source, target) -> None:
    """Moves the folder `source` to `target` (which must not exist). Locally one rename; in a bucket each object is
    copied (server-side) and the source deleted after all of them, so a move cut short leaves the source whole."""
    if not is_bucket_path(source):
        Path(source).rename(target)
        return
    prefix, destination = os.fspath(source).rstrip("/"), os.fspath(target).rstrip("/")
    for relative in list_files(prefix):
        storage_path(f"{prefix}/{relative}").copy(f"{destination}/{relative}", overwrite=True)
    remove_tree(prefix)


def upload_folder(local: str | Path, remote: str, *, marker: str | tuple[str, ...] = ()) -> None:
    """Copies the files under `local` to the folder `remote` (gs://), the file(s) named `marker` last, in that
    order: a reader that checks for them never sees a half-uploaded folder."""
    local, target = Path(local), storage_path(remote)
    markers = (marker,) if isinstance(marker, str) else marker
    files = sorted(p for p in local.rglob("*") if p.is_file())
    last = {name: i + 1 for i, name in enumerate(markers)}
    files.sort(key=lambda p: last.get(p.relative_to(local).as_posix(), 0))  # stable: the markers go last
    for file in files:  # streamed: a GCS upload becomes the object only when it is closed, whole
        with file.open("rb") as src, (target / file.relative_to(local).as_posix()).open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)


def local_cache_dir(kind: str, key: str) -> Path:
    """A folder on this host's disk for a local copy of something in a bucket: `$XDG_CACHE_HOME/rpo-jax/<kind>/
    <sha of key>` (default ~/.cache). Reused while `key` (e.g. the bucket URL) is the same."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rpo-jax" / kind
    return root / hashlib.sha256(key.encode()).hexdigest()[:20]


def list_files(root) -> dict[str, int]:
    """{path relative to `root` (posix): size in bytes} of every file under the folder `root` (local or gs://)."""
    if not is_bucket_path(root):
        root = Path(root)
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    prefix = os.fspath(root).rstrip("/")
    return {os.fspath(file)[len(prefix) + 1 :]: file.stat().length for file in _bucket_files(storage_path(prefix))}


def _bucket_files(folder) -> Iterator:
    """Every object under `folder` (epath's walk() drops the gs:// of the folders it yields, so: iterdir)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from _bucket_files(child)
        else:
            yield child


def local_copy(path: str, kind: str) -> str:
    """`path` itself when local; for a gs:// file or folder, a copy on this host's disk (`local_cache_dir`),
    downloaded again only when the names or sizes of the files in the bucket changed. For readers that need
    local files (memory-mapped safetensors, ArrayRecord shards read by Grain at random offsets). Written under a
    temporary name and renamed, so processes sharing a host never read a half-made copy."""
    if not is_bucket_path(path):
        return path
    source, target = storage_path(path), local_cache_dir(kind, path)
    if not source.is_dir():  # one file
        local = target / source.name
        if not local.is_file() or local.stat().st_size != source.stat().length:
            _download(source, local)
        return str(local)
    wanted = list_files(path)
    if target.is_dir() and list_files(target) == wanted:
        return str(target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    remove_tree(tmp)
    for relative in wanted:
        _download(storage_path(f"{path.rstrip('/')}/{relative}"), tmp / relative)
    remove_tree(target)
    try:
        tmp.rename(target)
    except OSError:  # another process of this host renamed the same copy into place first
        remove_tree(tmp)
    return str(target)


def _download(source, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    with source.open("rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    os.replace(tmp, local)


@contextlib.contextmanager
def staged_output(target: str, *, marker: str | tuple[str, ...] = (), overwrite: bool = False) -> Iterator[str]:
    """The local path a command writes its output folder into: `target` itself when local; for a gs:// target, a
    new folder on local disk, uploaded to `target` (the `marker` files last, see `upload_folder`) once the block
    has finished without an error. An existing `target` is an error unless `overwrite`, then replaced."""
    if not is_bucket_path(target):
        yield target
        return
    if storage_path(target).exists() and not overwrite:
        raise OutputExistsError(f"{target}: already exists (pass --overwrite to replace it)")
    with tempfile.TemporaryDirectory(prefix="rpo-jax-upload-") as stage:
        local = Path(stage) / Path(target.rstrip("/")).name
        yield str(local)
        remove_tree(target)
        upload_folder(local, target, marker=marker)
