"""Experiment trackers besides metrics.jsonl (`train.trackers`): TensorBoard, Weights & Biases, trackio.

Each is an optional extra of its own name; nothing is imported unless chosen, and a chosen tracker that is not
installed is refused before any work (`require_trackers`), naming the extra. Only process 0 logs: on every other
process `open_trackers` gives an empty set that logs nothing, as metrics.jsonl is written by process 0 alone.

Every tracker gets, when it opens, the run config and the fingerprints of what the run reads (training data or
mixture, held-out data, initial weights); then each record metrics.jsonl gets, at its step; at the end the closing
summary (its text, steps done and, for a mixture, the realised proportions). Where they write: TensorBoard event
files in `<output_dir>/tensorboard`; wandb its files in `<output_dir>/wandb` (WANDB_MODE=offline keeps the whole
run there, `wandb sync` uploads it later); trackio its local store (TRACKIO_DIR, by default
~/.cache/huggingface/trackio), in the project `train.tracker_project`.

Resume: `<output_dir>/trackers.json` keeps the wandb run id and the trackio run name, so a resumed run continues
the same tracker run. TensorBoard hides what the interrupted attempt logged after the checkpoint (a purge, as
metrics.jsonl is cut back); wandb and trackio keep it and receive the redone steps again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import secrets
from pathlib import Path

from data_pipeline.storage import is_bucket_path, local_cache_dir, storage_path
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.train.run_log import TensorBoardLog

# Tracker -> the module its extra installs (the extra has the tracker's name).
TRACKER_MODULES = {"tensorboard": "tensorboardX", "wandb": "wandb", "trackio": "trackio"}
IDS_FILE = "trackers.json"


def require_trackers(names) -> None:
    """Raises ConfigError naming the extra of the first chosen tracker that is not installed (nothing imported)."""
    for name in names:
        if importlib.util.find_spec(TRACKER_MODULES[name]) is None:
            raise ConfigError(f"train.trackers: {name} is not installed; pip install 'rpo-jax[{name}]'")


def scalars(record: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoardTracker:
    """TensorBoardLog's scalars, plus the config, fingerprints and closing summary as text."""

    def __init__(self, output_dir, start: dict, resumed_at: int | None, records_at_resume: list[dict]):
        self.log = TensorBoardLog(storage_path(output_dir) / "tensorboard", purge_step=resumed_at)
        for record in records_at_resume:  # evals at the resume step survive in metrics.jsonl, but the purge hides them
            self.log.write(record)
        self.log.write_text("run_config", "```\n" + json.dumps(start, indent=1, sort_keys=True) + "\n```", 0)

    def write(self, record: dict) -> None:
        self.log.write(record)

    def finish(self, text: str, values: dict, step: int) -> None:
        self.log.write_text("closing_summary", "```\n" + text + "\n```", step)

    def close(self, failed: bool) -> None:
        self.log.close()


class WandbTracker:
    def __init__(self, output_dir, start: dict, run_id: str, project: str):
        import wandb

        local = local_cache_dir("wandb", str(output_dir)) if is_bucket_path(output_dir) else Path(output_dir)
        local.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=project,
                name=Path(str(output_dir).rstrip("/")).name,
                id=run_id,
                dir=str(local),
                config=start,
                resume="allow",
                allow_val_change=True,  # a resumed run may extend train.steps or move its folder
            )
        except Exception as e:  # noqa: BLE001 - wandb raises its own types for login, network and settings problems
            raise ConfigError(
                f"train.trackers: wandb could not start ({type(e).__name__}: {e}); run `wandb login`, or set "
                f"WANDB_MODE=offline to keep the run in {local / 'wandb'}"
            ) from e

    def write(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def finish(self, text: str, values: dict, step: int) -> None:
        self.run.summary.update({**values, "closing_summary": text})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TrackioTracker:
    def __init__(self, start: dict, name: str, project: str):
        import trackio

        # No CPU/GPU sampling threads: the tracker holds what metrics.jsonl holds.
        self.run = trackio.init(
            project=project, name=name, config=start, resume="allow", auto_log_cpu=False, auto_log_gpu=False
        )

    def write(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def finish(self, text: str, values: dict, step: int) -> None:
        import trackio

        self.run.log({**values, "closing_summary": trackio.Markdown(text)}, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish()


class RunTrackers:
    """The chosen trackers of process 0 (none elsewhere): `write` each record, `finish` with the closing summary."""

    def __init__(self, trackers=()):
        self.trackers = list(trackers)

    def write(self, record: dict) -> None:
        for tracker in self.trackers:
            tracker.write(record)

    def finish(self, text: str, values: dict, step: int) -> None:
        """Logs the closing summary (`values`: numbers for the trackers' summaries) at `step`, then closes."""
        for tracker in self.trackers:
            tracker.finish(text, values, step)
        self.close()

    def close(self, failed: bool = False) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(failed)

    @contextlib.contextmanager
    def close_if_raises(self):
        """Closes the trackers (the run marked failed where a tracker knows how) when the block raises."""
        try:
            yield
        except BaseException:
            self.close(failed=True)
            raise


def open_trackers(
    cfg: Config,
    output_dir,
    *,
    is_main: bool,
    start: dict,
    resumed_at: int | None,
    records_at_resume: list[dict] = (),
) -> RunTrackers:
    """`train.trackers` opened on process 0 (`is_main`); an empty set elsewhere. `start`: the run config and
    fingerprints; `resumed_at`: the step a resumed run continues from (None when it starts fresh)."""
    if not is_main or not cfg.train.trackers:
        return RunTrackers()
    # TensorBoard needs no run identity; wandb and trackio continue theirs on resume.
    ids = run_ids(output_dir, resumed=resumed_at is not None) if {"wandb", "trackio"} & set(cfg.train.trackers) else {}
    opened = []
    for name in cfg.train.trackers:
        if name == "tensorboard":
            opened.append(TensorBoardTracker(output_dir, start, resumed_at, list(records_at_resume)))
        elif name == "wandb":
            opened.append(WandbTracker(output_dir, start, ids["wandb_id"], cfg.train.tracker_project))
        else:
            opened.append(TrackioTracker(start, ids["trackio_name"], cfg.train.tracker_project))
    return RunTrackers(opened)


def run_ids(output_dir, *, resumed: bool) -> dict[str, str]:
    """The wandb id and trackio name of the run in `output_dir`: those `trackers.json` keeps when resuming, new
    ones (saved there) otherwise."""
    path = storage_path(output_dir) / IDS_FILE
    if resumed and path.exists():
        return json.loads(path.read_text())
    suffix = secrets.token_hex(4)  # wandb ids are lowercase letters and digits
    ids = {"wandb_id": suffix, "trackio_name": f"{Path(str(output_dir).rstrip('/')).name}-{suffix}"}
    path.write_text(json.dumps(ids, indent=1) + "\n")
    return ids
