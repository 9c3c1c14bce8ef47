"""Keeps Orbax's own output about a failed checkpoint read or write off the terminal, in a log file.

When a save fails (disk full, permissions) Orbax logs the error with its traceback from each of its worker
threads, tensorstore callbacks then hit Orbax's closed event loop ("Event loop is closed", reported as
unraisable exceptions, many of them while the interpreter shuts down) and asyncio logs every unretrieved future:
hundreds of lines around the one that matters, `CheckpointWriteError`'s, which the command line prints last
and alone. A failed restore of a damaged checkpoint produces the same kind of noise. While installed, this
sends exactly those records to `log_path` (best effort: the disk may be the thing that is full):
  - log records at ERROR or above emitted from Orbax's own source files,
  - asyncio's "Task exception was never retrieved" records whose exception was raised inside Orbax (a failed
    restore of a damaged checkpoint leaves such futures behind even though the caller got the error),
  - unraisable "Event loop is closed" errors and unraisable exceptions raised inside Orbax (coroutines of a
    failed restore, reported when they are garbage-collected, possibly after the checkpointer closed),
  - after `failed()` was called: every asyncio log record and every unraisable exception (the interpreter is
    on its way out; they are all echoes of the failure).
Everything else is passed through unchanged.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from data_pipeline.storage import is_bucket_path, storage_path

_ORBAX_SOURCE = "/orbax/"
_LOGGERS = ("absl", "asyncio")


def _raised_in_orbax(exc_info) -> bool:
    if not exc_info or exc_info[2] is None:
        return False
    return any(_ORBAX_SOURCE in frame.filename.replace("\\", "/") for frame in traceback.extract_tb(exc_info[2]))


class OrbaxNoise(logging.Filter):
    def __init__(self, log_path: str | Path):
        super().__init__()
        self.log_path = storage_path(log_path)
        self._bucket_text = ""  # in a bucket nothing can be appended: the whole log is uploaded at each write
        self._failed = False
        self._closed = False  # uninstalled: only Orbax's abandoned futures and coroutines are still diverted
        self._previous_hook = None
        self.diverted = 0

    def install(self) -> OrbaxNoise:
        if self._previous_hook is None:
            for name in _LOGGERS:
                logging.getLogger(name).addFilter(self)
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def uninstall(self) -> None:
        """From now on only Orbax's own echoes are diverted (and, after a failure, everything, as its echoes keep
        coming until the process exits). The hooks stay: a coroutine or future that Orbax abandoned in a failed
        restore is reported only when the cyclic garbage collector reaches it, which may be after the
        checkpointer closed, or at exit."""
        self._closed = True

    def failed(self) -> None:
        self._failed = True

    def filter(self, record: logging.LogRecord) -> bool:
        own_error = _ORBAX_SOURCE in record.pathname.replace("\\", "/") and record.levelno >= logging.ERROR
        orbax_future = record.name == "asyncio" and _raised_in_orbax(record.exc_info)
        if (own_error and not self._closed) or orbax_future or (self._failed and record.name == "asyncio"):
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._write(f"[{record.name} {record.levelname}] {text}")
            return False
        return True

    def _unraisable(self, unraisable) -> None:
        closed_loop = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
            unraisable.exc_value
        )
        from_orbax = _raised_in_orbax((unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
        if not (closed_loop or from_orbax or self._failed):
            self._previous_hook(unraisable)
            return
        lines = traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        self._write(f"[unraisable] {unraisable.err_msg or ''} {unraisable.object!r}\n{''.join(lines)}")

    def _write(self, text: str) -> None:
        self.diverted += 1
        try:
            if is_bucket_path(self.log_path):
                self._bucket_text += text.rstrip() + "\n"
                self.log_path.write_text(self._bucket_text)
                return
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(text.rstrip() + "\n")
        except Exception:  # noqa: BLE001 - a full disk must not turn the noise back into a crash
            pass
