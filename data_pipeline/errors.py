"""The one exception type the command line prints as a single line (exit 2, no traceback unless `--debug`).

Every error a person can fix by changing an input - a config value, a flag, a file, a row of data - derives
from `UserError` (the training config's `ConfigError`, the pair schema's `DataError`, ...); anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input that the user can fix; the message names the file, line, setting or flag."""


class DataFileError(UserError, FileNotFoundError):
    """An input file or folder named by a setting or flag does not exist or cannot be read as what it should be."""


class OutputExistsError(UserError, FileExistsError):
    """An output path named by a flag or setting already exists and is not replaced without being asked to."""
