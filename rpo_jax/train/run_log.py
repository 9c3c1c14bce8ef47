"""Run outputs on process 0: metrics.jsonl (append-only, truncated back on resume), progress bar, report.png
(titled with run, model and loss; raw and smoothed training curves, held-out points, the learning rate).

In a bucket (gs://) nothing can be appended to: metrics.jsonl is uploaded whole after each record (one upload
replaces the object, so a reader sees the previous or the new version, never half of one), and the TensorBoard
event file is written on local disk and uploaded whole after each record the same way."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from data_pipeline.files import write_bytes_atomic
from data_pipeline.storage import is_bucket_path, storage_path

REPORT_PANELS = (
    ("loss", "loss"),
    ("rewards/accuracies", "reward accuracy"),
    ("rewards/margins", "reward margin"),
    ("learning_rate", "learning rate"),
)
# Weight of the exponential moving average drawn over the raw training curves (TensorBoard's default 0.6 is too
# little for per-step preference metrics of small batches).
SMOOTHING = 0.9


class TensorBoardLog:
    """The same records as scalars in a TensorBoard event file (tensorboardX's protos: no TensorFlow needed).

    Written synchronously, record by record, like metrics.jsonl: tensorboardX's SummaryWriter queues events in a
    thread, and a preempted or killed run would lose the tail. On resume, a SessionLog.START at `purge_step`
    makes TensorBoard drop what the interrupted run logged from that step on (as `MetricsLog.truncate_to` does).
    """

    def __init__(self, directory: str | Path, *, purge_step: int | None):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._bucket_dir = storage_path(directory) if is_bucket_path(directory) else None
        local = Path(tempfile.mkdtemp(prefix="rpo_jax_tensorboard_")) if self._bucket_dir else Path(directory)
        local.mkdir(parents=True, exist_ok=True)
        self._local = local
        self._writer = EventsWriter(str(local / "events"))  # writes the file-version header
        if purge_step is not None:
            self._writer.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self._flush()

    def _flush(self) -> None:
        self._writer.flush()
        if self._bucket_dir is not None:  # the whole event file, one upload (see the module's docstring)
            for file in self._local.iterdir():
                (self._bucket_dir / file.name).write_bytes(file.read_bytes())

    def write(self, record: dict) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=name, simple_value=float(value))
            for name, value in record.items()
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        self._writer.write_event(Event(wall_time=time.time(), step=record["step"], summary=Summary(value=values)))
        self._flush()

    def write_text(self, tag: str, text: str, step: int) -> None:
        """`text` (markdown) in TensorBoard's Text tab under `tag`."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import text as text_summary

        self._writer.write_event(Event(wall_time=time.time(), step=step, summary=text_summary(tag, text)))
        self._flush()

    def close(self) -> None:
        self._writer.close()
        if self._bucket_dir is not None:
            shutil.rmtree(self._local, ignore_errors=True)


class MetricsLog:
    """Appends one JSON line per logged step; `truncate_to(done)` drops lines a resumed run will redo.

    Train records carry the 0-based index of their step; eval records the number of steps done when they ran.
    Each record also goes to `mirror` (the run's trackers, `rpo_jax.train.trackers`) when one is attached.
    """

    def __init__(self, path: str | Path, *, enabled: bool):
        self.path = storage_path(path)
        self.enabled = enabled
        self.mirror = None
        self._bucket_lines: list[str] | None = None  # in a bucket: the whole file, uploaded again at each write

    def _replace(self, lines: list[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        if is_bucket_path(self.path):
            self._bucket_lines = list(lines)
            self.path.write_text(text)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def truncate_to(self, done: int) -> None:
        """Keeps what a checkpoint after `done` steps covers: train steps 0..done-1, evals at <= done steps."""
        if not self.enabled or not self.path.exists():
            return

        def covered(record: dict) -> bool:
            is_eval = any(k.startswith("eval/") for k in record)
            return record["step"] <= done if is_eval else record["step"] < done

        kept = [line for line in self.path.read_text().splitlines() if line.strip() and covered(json.loads(line))]
        self._replace(kept)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record, sort_keys=True)
        if is_bucket_path(self.path):
            if self._bucket_lines is None:
                self._bucket_lines = self.path.read_text().splitlines() if self.path.exists() else []
            self._replace([*self._bucket_lines, line])
        else:
            with self.path.open("a") as f:
                f.write(line + "\n")
                f.flush()
        if self.mirror is not None:
            self.mirror.write(record)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Progress:
    """tqdm bar showing loss, reward accuracy, tokens/s; ETA comes from tqdm itself."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train")

    def update(self, record: dict) -> None:
        self.bar.set_postfix(
            loss=f"{record.get('loss', math.nan):.4f}",
            acc=f"{record.get('rewards/accuracies', math.nan):.3f}",
            tok_s=f"{record.get('tokens_per_s', 0.0):.0f}",
            refresh=False,
        )
        self.bar.update(1)

    def write(self, text: str) -> None:
        """A line above the bar (the bar is redrawn below it)."""
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (as TensorBoard draws it): the first points are not pulled to 0."""
    out, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def report_title(cfg, output_dir: str | Path) -> str:
    """'<run folder> | <model> | loss rpo (beta 0.1)' for the top of report.png."""
    m = cfg.model
    model = Path(cfg.train.init_checkpoint).name if cfg.train.init_checkpoint else "random init"
    shape = f"Llama {m.num_hidden_layers}x{m.hidden_size}, {m.vocab_size} vocab"
    lora = f", LoRA rank {cfg.lora.rank}" if cfg.lora.rank else ""
    losses = " + ".join(
        name if weight == 1 else f"{weight:g}*{name}" for name, weight in zip(cfg.loss.loss_type, cfg.loss.loss_weights)
    )
    return f"{Path(output_dir).name} | {model} ({shape}{lora}) | loss {losses} (beta {cfg.loss.beta:g})"


def write_report(records: list[dict], path: str | Path, *, title: str = "") -> None:
    """report.png (written atomically) of `report_figure`."""
    save_figure(report_figure(records, title), path, dpi=100)


def save_figure(fig, path: str | Path, *, dpi: int) -> Path:
    """`fig` as a PNG at `path`, written atomically (a reader never sees half a plot), then closed."""
    import io

    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi)
    plt.close(fig)
    return write_bytes_atomic(path, png.getvalue())


def report_figure(records: list[dict], title: str = ""):
    """Loss, reward accuracy, margins (train raw and smoothed, held-out) and learning rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REPORT_PANELS), figsize=(4.6 * len(REPORT_PANELS), 3.8))
    for ax, (key, name) in zip(axes, REPORT_PANELS):
        train = [(r["step"], r[key]) for r in records if key in r]
        if train:
            steps, values = zip(*train)
            if key == "learning_rate":
                ax.plot(steps, values, "-", color="C2", label="train")
            else:
                ax.plot(steps, values, "-", color="C0", alpha=0.3, linewidth=1, label="train (raw)")
                ax.plot(steps, smoothed(list(values)), "-", color="C0", label=f"train (EMA {SMOOTHING})")
        held_out = [(r["step"], r["eval/" + key]) for r in records if "eval/" + key in r]
        if held_out:
            steps, values = zip(*held_out)
            ax.plot(steps, values, "o-", color="C1", markersize=3, label="held-out")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if train or held_out:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig
