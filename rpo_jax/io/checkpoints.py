"""Step checkpoints (Orbax): train state, data-iterator state, resolved config and data fingerprint.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save leaves
only an ignored temporary; `latest_step` sees complete checkpoints only. In a bucket (gs://, no rename) Orbax
writes the step folder in place and `commit_success.txt` into it last; a step folder without it is a save that
was cut off (`unfinished_steps`), which Orbax ignores and resume names and sets aside. The reference model is
never part of a step checkpoint: it is rebuilt from `train.init_checkpoint` (or the seed) on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from data_pipeline.errors import UserError
from data_pipeline.storage import absolute_storage_path, move_tree, remove_tree
from rpo_jax.config.loading import PATH_LIST_SETTINGS, PATH_SETTINGS
from rpo_jax.io.orbax_noise import OrbaxNoise

# Where Orbax's own tracebacks of a failed read or write go (beside `checkpoints/`; see orbax_noise).
NOISE_LOG = "checkpoint_errors.log"


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint was written by a run with another config or other data."""


class CheckpointWriteError(UserError, RuntimeError):
    """Saving a step failed (disk full, unwritable directory...); complete earlier checkpoints are untouched."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": value.decode("latin-1")}
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _from_json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return value["__bytes__"].encode("latin-1")
        return {k: _from_json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


class StepCheckpointer:
    """Keep-last-k Orbax checkpoints under `<output_dir>/checkpoints`, optionally saved asynchronously."""

    def __init__(self, directory: str | Path, *, keep_last: int, async_save: bool):
        self.directory = absolute_storage_path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last, enable_async_checkpointing=async_save, create=True
        )
        self.noise = OrbaxNoise(self.directory.parent / NOISE_LOG).install()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data_iter", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Complete checkpoints, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def unfinished_steps(self) -> list[int]:
        """Step folders Orbax does not count as complete: in a bucket, saves cut off before commit_success.txt
        (locally an unfinished save is a `<step>.orbax-checkpoint-tmp-*` folder, which is no step number)."""
        complete = set(self.manager.all_steps())
        found = self.directory.iterdir() if self.directory.is_dir() else ()
        return sorted(int(p.name) for p in found if p.name.isdigit() and int(p.name) not in complete)

    def set_aside(self, step: int, destination: Path) -> Path:
        """Moves step `step`'s folder to `destination/<step>` (kept for inspection, out of Orbax's sight)."""
        destination.mkdir(parents=True, exist_ok=True)
        target = destination / str(step)
        remove_tree(target)
        move_tree(self.directory / str(step), target)
        self.manager.reload()
        return target

    def save(self, step: int, state: Any, data_iter_state: Any, meta: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=ocp.args.JsonSave(_json_safe({"state": data_iter_state})),
            meta=ocp.args.JsonSave(meta),
        )
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as e:  # tensorstore and Orbax raise several types for one failed write
            raise self._write_error(f"saving step {step}", e) from e
        return saved

    def _write_error(self, what: str, cause: Exception) -> CheckpointWriteError:
        self.noise.failed()
        latest = self.latest_step()
        kept = f"the latest complete checkpoint is step {latest}" if latest is not None else "no complete checkpoint"
        first_line = str(cause).splitlines()[0] if str(cause) else ""
        return CheckpointWriteError(
            f"{self.directory}: {what} failed ({type(cause).__name__}: {first_line[:300]}); {kept}, "
            f"left as it was (an unfinished save is only a temporary directory); Orbax's own messages are in "
            f"{self.noise.log_path}"
        )

    def read_meta(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
        """Restores into the shardings carried by `abstract_state` (jax.ShapeDtypeStruct leaves)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iter=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], _from_json_safe(restored["data_iter"])["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished; its failure is raised here."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error("an asynchronous save", e) from e

    def close(self) -> None:
        self.wait()
        self.manager.close()
        self.noise.uninstall()


# Path settings (config_loading.PATH_SETTINGS, and the mixture's data.sources) are not compared on resume: a run
# folder may be moved or copied, with its data beside it. What they point at is compared, through these
# fingerprints (a mixture's covers its sources' content and weights).
BOOKKEEPING_SETTINGS = {
    ("train", "log_every"),
    ("train", "eval_every"),
    ("train", "trackers"),
    ("train", "tracker_project"),
    ("checkpoint", "save_every"),
    ("checkpoint", "save_every_minutes"),
    ("checkpoint", "keep_last"),
    ("checkpoint", "async_save"),
    ("data", "num_workers"),
}
FINGERPRINT_SETTINGS = {
    "data_fingerprint": "data.train_path",
    "eval_data_fingerprint": "data.eval_path",
    "init_checkpoint_fingerprint": "train.init_checkpoint",
}


def check_resume_compatible(
    meta: dict, config_dict: dict, fingerprints: dict, *, allow_config_change: bool, allow_data_change: bool
) -> None:
    """Refuses to resume a checkpoint whose config or data differ, unless told otherwise.

    `fingerprints` maps the keys of FINGERPRINT_SETTINGS to what this run reads now; a checkpoint written
    before a key existed is not compared on it.
    """
    for key, setting in FINGERPRINT_SETTINGS.items():
        if key == "data_fingerprint" and config_dict.get("data", {}).get("sources"):
            setting = "data.sources"  # a mixture's fingerprint: its sources' content and weights
        if key in meta and meta[key] != fingerprints.get(key) and not allow_data_change:
            raise CheckpointMismatchError(
                f"{setting}: the checkpoint was trained on content with fingerprint {meta[key]}, this run reads "
                f"{fingerprints.get(key)}; pass --allow-data-change to resume anyway"
            )
    old = meta.get("config", {})
    # Steps may change on resume (extending a run), and so may what only decides when things are logged or saved
    # and how data is read; paths may move (what they point at is compared above); the rest must match.
    ignore = {("train", "steps"), *BOOKKEEPING_SETTINGS, *PATH_SETTINGS, *PATH_LIST_SETTINGS}
    diffs = [
        f"{sec}.{key}: {old.get(sec, {}).get(key)!r} -> {val!r}"
        for sec, fields in config_dict.items()
        for key, val in fields.items()
        if (sec, key) not in ignore and json.dumps(old.get(sec, {}).get(key)) != json.dumps(val)
    ]
    if diffs and not allow_config_change:
        raise CheckpointMismatchError(
            "checkpoint config differs: " + "; ".join(diffs) + " (pass --allow-config-change to resume anyway)"
        )


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target for `StepCheckpointer.restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
