"""`train.trackers`: TensorBoard, wandb (offline) and trackio (local store) receive the run config with the data
fingerprint, every record, and the closing summary; only process 0 logs; a missing extra or the old
`train.tensorboard` key is one line saying what to do. No training here (tests/test_mixture_train.py runs one)."""

from __future__ import annotations

import glob
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rpo_jax.config.loading import config_from_stored, load_config
from rpo_jax.config.schema import ConfigError
from rpo_jax.train.trackers import TRACKER_MODULES, open_trackers, require_trackers

ROOT = Path(__file__).resolve().parents[1]
ALL = ["tensorboard", "wandb", "trackio"]
START = {"train": {"steps": 3}, "fingerprints": {"data_fingerprint": "feedbeef"}}
RECORDS = [{"step": 0, "loss": 0.69, "eval/loss": 0.7}, {"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


def config(tmp_path, trackers=ALL):
    return load_config(
        ROOT / "configs/base.yaml", [f"train.output_dir={tmp_path / 'run'}", f"train.trackers={json.dumps(trackers)}"]
    )


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of a wandb offline run (its transaction log: 7-byte header, then 32 KiB blocks of
    chunks, each with a crc32, a length and a type: full, first, middle or last)."""
    from wandb.proto import wandb_internal_pb2

    out = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data, position, chunk = Path(path).read_bytes(), 7, b""
        while position + 7 <= len(data):
            left = 32768 - position % 32768
            _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if left >= 7 else (0, 0, 0)
            if left < 7 or (length, kind) == (0, 0):
                position += left
                continue
            chunk += data[position + 7 : position + 7 + length]
            position += 7 + length
            if kind in (1, 4):  # full or last
                out.append(wandb_internal_pb2.Record.FromString(chunk))
                chunk = b""
    return out


def wandb_items(records: list, kind: str) -> list[dict]:
    items = {"history": "item", "summary": "update", "config": "update"}[kind]
    return [
        {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in getattr(getattr(r, kind), items)}
        for r in records
        if r.WhichOneof("record_type") == kind
    ]


@pytest.fixture
def tracker_env(tmp_path, monkeypatch):
    """wandb offline, trackio's store under tmp_path (its location is read when trackio is first imported)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio_store"))
    for name in [m for m in sys.modules if m == "trackio" or m.startswith("trackio.")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


def test_every_tracker_gets_config_fingerprint_records_and_summary_and_resumes_its_run(tracker_env):
    tmp_path = tracker_env
    cfg, run_dir = config(tmp_path), tmp_path / "run"
    run_dir.mkdir()
    opened = open_trackers(cfg, run_dir, is_main=True, start=START, resumed_at=None)
    for record in RECORDS[:2]:
        opened.write(record)
    opened.close()  # an attempt cut off after step 1; resumed from step 1
    ids = json.loads((run_dir / "trackers.json").read_text())
    resumed = open_trackers(cfg, run_dir, is_main=True, start=START, resumed_at=1, records_at_resume=[RECORDS[1]])
    assert json.loads((run_dir / "trackers.json").read_text()) == ids  # the same tracker runs continue
    resumed.write(RECORDS[2])
    resumed.finish("run finished: 3 of 3 steps", {"steps_done": 3, "mixture/source0/trained_share": 0.7}, 3)

    records = wandb_records(run_dir)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {ids["wandb_id"]} and {r.display_name for r in runs} == {"run"}
    assert {r.project for r in runs} == {"rpo-jax"}
    config_items = {i.key: json.loads(i.value_json) for i in runs[0].config.update}
    assert config_items["fingerprints"] == {"data_fingerprint": "feedbeef"} and config_items["train"] == {"steps": 3}
    history = [{k: v for k, v in h.items() if not k.startswith("_")} for h in wandb_items(records, "history")]
    assert [h["loss"] for h in history if "loss" in h] == [0.69, 0.5, 0.25]
    summary = {k: v for s in wandb_items(records, "summary") for k, v in s.items()}
    assert summary["closing_summary"] == "run finished: 3 of 3 steps" and summary["steps_done"] == 3

    from trackio.sqlite_storage import SQLiteStorage

    assert (tmp_path / "trackio_store" / "rpo-jax.db").is_file()
    logs = SQLiteStorage.get_logs("rpo-jax", ids["trackio_name"])
    assert [(log["step"], log.get("loss")) for log in logs if "loss" in log] == [(0, 0.69), (1, 0.5), (2, 0.25)]
    assert logs[-1]["closing_summary"]["_value"] == "run finished: 3 of 3 steps" and logs[-1]["steps_done"] == 3
    assert SQLiteStorage.get_run_config("rpo-jax", ids["trackio_name"])["fingerprints"] == START["fingerprints"]

    from tensorboardX.proto.event_pb2 import Event

    texts = {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            for value in Event.FromString(data[offset + 12 : offset + 12 + length]).summary.value:
                if value.HasField("tensor"):
                    texts[value.tag] = value.tensor.string_val[0].decode()
            offset += 12 + length + 4
    assert "feedbeef" in texts["run_config/text_summary"]
    assert "run finished: 3 of 3 steps" in texts["closing_summary/text_summary"]


def test_only_process_0_logs_and_nothing_is_imported_unless_chosen(tmp_path):
    opened = open_trackers(config(tmp_path), tmp_path / "run", is_main=False, start=START, resumed_at=None)
    assert opened.trackers == []
    opened.write(RECORDS[0])
    opened.finish("summary", {}, 1)
    assert not (tmp_path / "run").exists()  # no event file, no wandb folder, no trackers.json
    check = (
        "import sys, rpo_jax.cli, rpo_jax.train.trainer; "
        "print(sorted({'wandb', 'trackio', 'tensorboardX'} & {m.split('.')[0] for m in sys.modules}))"
    )
    imported = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"


def test_a_missing_extra_and_the_old_key_are_one_line_each(tmp_path, monkeypatch):
    monkeypatch.setitem(TRACKER_MODULES, "wandb", "wandb_is_not_installed_here")
    with pytest.raises(ConfigError, match=r"^train\.trackers: wandb is not installed; pip install 'rpo-jax\[wandb\]'$"):
        require_trackers(config(tmp_path).train.trackers)
    with pytest.raises(ConfigError, match=r"train\.tensorboard was replaced by train\.trackers: write `trackers: "):
        load_config(ROOT / "configs/base.yaml", ["train.tensorboard=true"])
    with pytest.raises(ConfigError, match=r"train\.trackers: \['wandb', 'wandb'\] must name each of tensorboard"):
        config(tmp_path, ["wandb", "wandb"])
    with pytest.raises(ConfigError, match=r"train\.trackers: \['mlflow'\]"):
        config(tmp_path, ["mlflow"])
    stored = {"train": {"tensorboard": True}}  # a checkpoint written before train.trackers
    assert config_from_stored(stored).train.trackers == ("tensorboard",)  # an old checkpoint's config still reads
