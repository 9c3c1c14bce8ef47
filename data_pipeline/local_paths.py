"""Path settings and flags name local (or mounted) filesystem paths; URLs are refused, not misread.

Every path is opened with the local filesystem (pathlib / open / Orbax on a directory), where `gs://b/x` would
silently become a local folder `gs:/b/x`. Until URLs are supported (Orbax could write them, but metrics.jsonl
appends, report.png, TensorBoard events and the HF export would need staging + upload) they are refused:
`rpo_jax.config.check_local_path` for config fields, `local_path_arg` for command-line flags.
"""

from __future__ import annotations

import argparse
import re

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
