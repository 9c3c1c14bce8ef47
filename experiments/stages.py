"""Stages of an experiment, cached by content hash and resumable.

A stage's key hashes its name, its settings and the keys of the stages it reads, so changing a setting reruns that
stage and everything downstream while the rest is reused. A stage writes into `<root>/.<name>-<key>.partial/` and
the folder is renamed to `<root>/<name>-<key>/` only when the stage finished (its `stage.json` records settings,
inputs, summary and wall time): an interrupted stage is never mistaken for a finished one, and its partial folder
is handed back to the next attempt (training resumes from its checkpoints there). The wall time is summed over
attempts (each one that ends with an exception, SIGTERM or Ctrl-C included, leaves its seconds in the partial
folder), so a stage trained across several preemptions reports what it cost; an attempt killed outright (SIGKILL,
power loss) cannot record itself and is missing from the sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.files import write_json_atomic
from rpo_jax.runtime.out_of_memory import out_of_memory

STAGE_FILE = "stage.json"
EARLIER_ATTEMPTS_FILE = "earlier_attempts.json"  # in a partial folder: {"attempts": n, "seconds": s}
KEY_LENGTH = 16


class StageStopped(Exception):
    """A stage stopped before it finished (training after a SIGTERM, with a checkpoint): its folder stays
    partial, so the next run of the same command continues it instead of reading a half-trained model."""

    exit_code = 0  # as `rpo-jax train` after a SIGTERM: a preempted job is not a failed one


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    key: str
    path: Path
    summary: dict
    seconds: float
    cached: bool

    def file(self, relative: str) -> Path:
        """A file the stage wrote (summaries name files relative to the stage folder)."""
        return self.path / relative


def stage_key(name: str, settings: dict, inputs: tuple[Stage, ...]) -> str:
    payload = {"name": name, "settings": settings, "inputs": {s.name: s.key for s in inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:KEY_LENGTH]


class StageStore:
    """The stage folders of one experiment output directory. With `only` set (`--stage NAME`), stages whose name
    does not start with it are not run: they must already be done (`require`)."""

    def __init__(self, root: str | Path, only: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.only = only

    def folder(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def cached(self, name: str, settings: dict, inputs: tuple[Stage, ...] = ()) -> Stage | None:
        key = stage_key(name, settings, inputs)
        record = self.folder(name, key) / STAGE_FILE
        if not record.is_file():
            return None
        meta = json.loads(record.read_text())
        return Stage(name, key, record.parent, meta["summary"], meta["seconds"], cached=True)

    def require(self, name: str, settings: dict, inputs: tuple[Stage, ...] = ()) -> Stage:
        """A finished stage that a later stage reads (`--stage` runs one stage only)."""
        stage = self.cached(name, settings, inputs)
        if stage is None:
            raise UserError(
                f"{self.root}: stage {name!r} has not run with these settings; run the experiment "
                f"without --stage (or with --stage {name}) first"
            )
        return stage

    def run(self, name: str, settings: dict, inputs: tuple[Stage, ...], build: Callable[[Path], dict]) -> Stage:
        """The cached stage, or `build(folder)` (which returns the stage's summary) run to completion."""
        done = self.cached(name, settings, inputs)
        if done is not None:
            return done
        if self.only is not None and not name.startswith(self.only):
            return self.require(name, settings, inputs)
        key = stage_key(name, settings, inputs)
        partial = self.root / f".{name}-{key}.partial"
        partial.mkdir(exist_ok=True)
        earlier_file = partial / EARLIER_ATTEMPTS_FILE
        earlier = json.loads(earlier_file.read_text()) if earlier_file.is_file() else {"attempts": 0, "seconds": 0.0}
        started = time.perf_counter()

        def spent() -> dict:  # the earlier attempts and this one
            return {"attempts": earlier["attempts"] + 1, "seconds": earlier["seconds"] + time.perf_counter() - started}

        try:
            summary = build(partial)
        except BaseException as err:  # KeyboardInterrupt and StageStopped too: their time was spent all the same
            write_json_atomic(earlier_file, spent())
            oom = out_of_memory(err, f"stage {name}-{key}") if isinstance(err, Exception) else None
            if oom is None:
                raise
            raise oom from err  # one line naming the stage; the partial folder stays for the next attempt
        total = spent()
        meta = {
            "name": name,
            "key": key,
            "settings": settings,
            "inputs": {s.name: s.key for s in inputs},
            "summary": summary,
            **total,
        }
        write_json_atomic(partial / STAGE_FILE, meta)
        final = self.folder(name, key)
        if final.exists():  # a concurrent or earlier run finished the same stage: keep that one
            shutil.rmtree(partial)
            return self.cached(name, settings, inputs)
        partial.rename(final)
        (final / EARLIER_ATTEMPTS_FILE).unlink(missing_ok=True)  # its totals are in stage.json now
        return Stage(name, key, final, summary, total["seconds"], cached=False)
