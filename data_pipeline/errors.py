"""The one exception type the command line prints as a single line (exit 2, no traceback unless `--debug`).

Every error a person can fix by changing an input - a config value, a flag, a file, a row of data - derives
from `UserError` (the training config's `ConfigError`, the pair schema's `DataError`, ...); anything else is a
bug and keeps its traceback. `malformed_json` words a JSON syntax error the same way for every reader.
"""

from __future__ import annotations

import json


class UserError(Exception):
    """Bad input that the user can fix; the message names the file, line, setting or flag."""


class DataFileError(UserError, FileNotFoundError):
    """An input file or folder named by a setting or flag does not exist or cannot be read as what it should be."""


class OutputExistsError(UserError, FileExistsError):
    """An output path named by a flag or setting already exists and is not replaced without being asked to."""


def malformed_json(err: json.JSONDecodeError) -> str:
    """'malformed JSON at column 26: Expecting ',' delimiter'. The caller puts file and line in front: `err.msg`
    alone stops before the position, and str(err)'s 'line 1' is the line within one JSONL row, not the file's."""
    return f"malformed JSON at column {err.colno}: {err.msg}"
