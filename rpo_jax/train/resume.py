"""`--resume [STEP]`: which checkpoint a run continues from, verified by reading it back.

A checkpoint is trusted only once its config matches (`check_resume_compatible`) and it restores: every array
read back and decoded (a truncated or zeroed file fails there). Without a step, the newest checkpoint that
restores wins; each newer one that does not is named with the reason, and moved to
`<output_dir>/set_aside_checkpoints/` so the resumed run can save those steps again; so is a step folder whose
save was cut off before it committed (in a bucket: no `commit_success.txt`). With a step, that
checkpoint or an error; newer ones (another trajectory from now on) are set aside the same way. No checkpoint at
all: the run starts fresh and says so.

What a run reads that a path alone does not identify is fingerprinted here (`run_fingerprints`), so a moved or
copied run folder still resumes while changed data or weights do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from data_pipeline.records.loader import dataset_fingerprint
from data_pipeline.records.mixture import mixture_fingerprint
from data_pipeline.storage import list_files, storage_path
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.io.checkpoints import CheckpointMismatchError, StepCheckpointer, check_resume_compatible
from rpo_jax.train.batches import mixture_sources

SET_ASIDE_DIR = "set_aside_checkpoints"
# Files of a weights folder whose content identifies it cheaply (the tensors are identified by name and size).
_IDENTITY_FILES = ("config.json", "model_config.json", "lora_config.json", "model.safetensors.index.json")


class NoUsableCheckpoint(ConfigError):
    """`--resume` found checkpoints, but none it can continue from."""


@dataclasses.dataclass(frozen=True)
class ResumeRequest:
    """`--resume [STEP]` and the checks it may skip."""

    step: int | None = None  # None: the newest checkpoint that reads back
    allow_config_change: bool = False
    allow_data_change: bool = False


def weights_fingerprint(path: str) -> str:
    """sha256 over a weights folder's file names and sizes and its small config files ('' for no path)."""
    if not path:
        return ""
    root, digest = storage_path(path), hashlib.sha256()
    for rel, size in sorted(list_files(path).items()):
        digest.update(f"{rel}\0{size}\0".encode())
        if Path(rel).name in _IDENTITY_FILES:
            digest.update((root / rel).read_bytes())
    return digest.hexdigest()


def run_fingerprints(cfg: Config) -> dict[str, str]:
    """What a step checkpoint records about the data and weights it was trained from."""
    return {
        "data_fingerprint": (
            mixture_fingerprint(mixture_sources(cfg)) if cfg.data.sources else dataset_fingerprint(cfg.data.train_path)
        ),
        "eval_data_fingerprint": dataset_fingerprint(cfg.data.eval_path) if cfg.data.eval_path else "",
        "init_checkpoint_fingerprint": weights_fingerprint(cfg.train.init_checkpoint),
    }


def _all_agree(ok: bool) -> bool:
    """Multi-process: a checkpoint counts as restored only when every process read its part."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _reason(error: Exception) -> str:
    """The innermost cause, on one line: Orbax wraps TensorStore's precise message in generic ones."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def restore_for_resume(
    checkpointer: StepCheckpointer,
    restore: Callable[[int], Any],
    request: ResumeRequest,
    config_dict: dict,
    fingerprints: dict,
    say: Callable[[str], None],
) -> tuple[int, Any] | None:
    """(step, what `restore(step)` returned) for the checkpoint to continue from; None to start fresh.

    `restore(step)` reads a step into the run's state (raising when it cannot); `config_dict` and
    `fingerprints` describe this run (for `check_resume_compatible`); `say` prints a line.
    """
    requested_step = request.step
    _set_aside_unfinished(checkpointer, say)
    steps = checkpointer.all_steps()
    where = checkpointer.directory
    if not steps:
        if requested_step is not None:
            raise NoUsableCheckpoint(f"--resume {requested_step}: {where} holds no complete checkpoint")
        say(f"--resume: no checkpoint in {where}; starting fresh")
        return None
    if requested_step is not None and requested_step not in steps:
        raise NoUsableCheckpoint(
            f"--resume {requested_step}: no complete checkpoint for that step in {where} (there are: "
            f"{', '.join(map(str, steps))})"
        )
    candidates = [requested_step] if requested_step is not None else steps
    failures: list[str] = []
    for step in candidates:
        try:
            meta = checkpointer.read_meta(step)
            check_resume_compatible(
                meta,
                config_dict,
                fingerprints,
                allow_config_change=request.allow_config_change,
                allow_data_change=request.allow_data_change,
            )
            restored, error = restore(step), None
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in Orbax/TensorStore in many ways
            restored, error = None, e
        if _all_agree(error is None):
            _set_aside_newer(checkpointer, step, steps, failures, say)
            return step, restored
        failures.append(f"step {step} ({_reason(error) if error else 'unreadable on another process'})")
    raise NoUsableCheckpoint(
        f"--resume: no checkpoint in {where} can be read back: {'; '.join(failures)}. Resume from another step "
        "with --resume STEP, or start again with --overwrite"
    )


def _set_aside_unfinished(checkpointer: StepCheckpointer, say: Callable[[str], None]) -> None:
    """Names step folders whose save never committed and moves them out of the way of the resumed run's saves."""
    unfinished = checkpointer.unfinished_steps()
    if jax.process_count() > 1:  # every process lists before process 0 moves anything
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("rpo_jax_listed_unfinished_checkpoints")
    if not unfinished:
        return
    destination = _set_aside(checkpointer, unfinished)
    steps = ", ".join(map(str, unfinished))
    say(
        f"--resume: skipped step {steps} in {checkpointer.directory}: its save was cut off before it committed (no "
        f"commit marker); moved to {destination}"
    )


def _set_aside(checkpointer: StepCheckpointer, steps: list[int]) -> Path:
    """Process 0 moves `steps` to the set-aside folder; every process then waits and reloads. Returns the folder."""
    destination = checkpointer.directory.parent / SET_ASIDE_DIR
    if jax.process_index() == 0:
        for step in steps:
            checkpointer.set_aside(step, destination)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("rpo_jax_set_aside_checkpoints")
        checkpointer.manager.reload()
    return destination


def _set_aside_newer(
    checkpointer: StepCheckpointer, step: int, steps: list[int], failures: list[str], say: Callable[[str], None]
) -> None:
    newer = [s for s in steps if s > step]
    if not newer:
        return
    destination = _set_aside(checkpointer, newer)
    if failures:
        say(
            f"--resume: {'; '.join(failures)} cannot be read back; resuming from step {step}, the newest "
            f"complete earlier checkpoint (the unreadable ones are kept in {destination})"
        )
    else:
        moved = ", ".join(map(str, newer))
        say(f"--resume {step}: later checkpoints (step {moved}) moved to {destination}")
