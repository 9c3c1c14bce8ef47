"""Orbax's echoes of a failed checkpoint read go to the run's noise log, not the terminal, even when the abandoned
future is only reported after the checkpointer closed (the damaged-checkpoint resume printed a traceback there)."""

import logging
import sys
import traceback
from types import SimpleNamespace

from rpo_jax.io.orbax_noise import OrbaxNoise


def _record(pathname: str, exc_info=None, name="asyncio") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, pathname, 1, "Task exception was never retrieved", (), exc_info)


def _exc_info_raised_in(filename: str):
    source = "def read():\n    raise Exception('Encountered error while reading array index')\n"
    code = compile(source, filename, "exec")
    scope: dict = {}
    exec(code, scope)
    try:
        scope["read"]()
    except Exception:
        return sys.exc_info()


def test_abandoned_orbax_futures_are_diverted_after_close_and_others_pass(tmp_path):
    noise = OrbaxNoise(tmp_path / "orbax.log").install()
    try:
        noise.uninstall()
        orbax = _exc_info_raised_in("/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
        assert not noise.filter(_record("/usr/lib/python3.11/asyncio/base_events.py", orbax))
        assert "Encountered error while reading array index" in (tmp_path / "orbax.log").read_text()
        mine = _exc_info_raised_in("/work/project/mine.py")
        assert noise.filter(_record("/usr/lib/python3.11/asyncio/base_events.py", mine))  # not Orbax's: shown
        # Orbax's own ERROR records are diverted only while installed.
        assert noise.filter(_record("/venv/site-packages/orbax/checkpoint/x.py", name="absl"))
    finally:
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(noise)


def test_orbax_errors_are_diverted_while_installed(tmp_path):
    noise = OrbaxNoise(tmp_path / "orbax.log").install()
    try:
        assert not noise.filter(_record("/venv/site-packages/orbax/checkpoint/x.py", name="absl"))
        assert noise.filter(_record("/work/project/mine.py", name="absl"))
    finally:
        noise.uninstall()
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(noise)


def test_orbax_coroutines_reported_unraisable_after_close_are_diverted(tmp_path):
    seen = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    noise = OrbaxNoise(tmp_path / "orbax.log").install()
    try:
        noise.uninstall()
        for filename in ("/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py", "/work/mine.py"):
            exc_type, exc, tb = _exc_info_raised_in(filename)
            sys.unraisablehook(
                SimpleNamespace(
                    exc_type=exc_type, exc_value=exc, exc_traceback=tb, err_msg="Exception ignored in", object=None
                )
            )
        assert len(seen) == 1 and "mine.py" in "".join(traceback.format_tb(seen[0].exc_traceback))
        assert "Exception ignored in" in (tmp_path / "orbax.log").read_text()
    finally:
        sys.unraisablehook = previous
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(noise)
