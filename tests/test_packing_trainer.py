"""`rpo-jax train` with `data.packing=packed_shared_prompt` (RPO mirrors grouped, precomputed reference): it trains,
passes the step-0 check against the unpacked reference pass, and a resumed run continues the packed stream
exactly."""

import json

import pytest
from trainer_fixtures import run_train, write_config

pytestmark = pytest.mark.slow

PACKED = {"packing": "packed_shared_prompt", "group_mirrors": True, "global_batch_size": 8}


def metric_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("step_time", "tokens_per_s")} for r in lines]


def test_packed_run_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    (tmp_path / "full").mkdir()
    (tmp_path / "split").mkdir()
    sections = dict(data=PACKED, train={"reference_mode": "precomputed"})
    full = write_config(tmp_path / "full", steps=4, save_every=2, data_dir=data, **sections)
    result = run_train(full)
    assert result.returncode == 0, result.stderr[-3000:]
    records = metric_lines(tmp_path / "full" / "run")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    # Packed rows of 2 x 256 tokens hold more than one pair each: more pairs per step than the 8 rows.
    assert all(r["num_tokens"] > 0 and r["loss"] > 0 for r in records)

    split = write_config(tmp_path / "split", steps=2, save_every=2, data_dir=data, **sections)
    assert run_train(split).returncode == 0
    resumed = run_train(split, "--resume", "--steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(records[2:], metric_lines(tmp_path / "split" / "run")[2:], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
