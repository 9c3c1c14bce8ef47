"""What a run shows a person: report.png's title and panels, the smoothing, the closing summary, the dropped-share
note; and the output-folder policy (one run per folder) on its own."""

from pathlib import Path

import pytest

from rpo_jax.config.loading import load_config
from rpo_jax.config.schema import ConfigError
from rpo_jax.train.run_dir import claim_output_dir
from rpo_jax.train.run_log import report_figure, report_title, smoothed
from rpo_jax.train.run_summary import closing_summary, dropped_share_note

ROOT = Path(__file__).resolve().parents[1]


def fake_records(steps: int = 30, eval_every: int = 10) -> list[dict]:
    records = []
    for step in range(steps):
        noise = (-1) ** step * 0.1
        records.append(
            {
                "step": step,
                "loss": 0.7 - 0.005 * step + noise,
                "rewards/accuracies": 0.5 + noise,
                "rewards/margins": 0.01 * step + noise,
                "learning_rate": 1e-3 * min(1.0, (step + 1) / 5),
            }
        )
        if (step + 1) % eval_every == 0 or step == 0:
            done = 0 if step == 0 else step + 1
            records.append({"step": done, "eval/loss": 0.69, "eval/rewards/accuracies": 0.6, "eval/num_pairs": 36})
    return records


def test_report_has_a_title_raw_and_smoothed_curves_and_a_learning_rate_panel():
    import matplotlib.pyplot as plt

    cfg = load_config(ROOT / "configs/run/tiny_rpo.yaml")
    title = report_title(cfg, "runs/tiny_rpo")
    assert title.startswith("tiny_rpo | random init (Llama 2x64, 32000 vocab) | loss rpo (beta 0.1)")
    fig = report_figure(fake_records(), title)
    assert fig._suptitle.get_text() == title
    panels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert panels["loss"] == ["train (raw)", "train (EMA 0.9)", "held-out"]
    assert panels["reward accuracy"] == ["train (raw)", "train (EMA 0.9)", "held-out"]
    assert panels["reward margin"] == ["train (raw)", "train (EMA 0.9)"]
    assert panels["learning rate"] == ["train"]
    plt.close(fig)


def test_smoothing_is_a_debiased_moving_average():
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    values = [(-1) ** i for i in range(200)]
    assert abs(smoothed(values)[-1]) < 0.1 and smoothed([1.0, 0.0], 0.5)[1] == pytest.approx(1 / 3)


def test_closing_summary_names_results_and_places(tmp_path):
    records = fake_records()
    text = closing_summary(
        records, total_steps=30, output_dir=tmp_path, seconds=125.4, latest_checkpoint=30, export_dir=tmp_path / "hf"
    )
    assert text.splitlines()[0] == "run finished: 30 of 30 steps in 2m05s"
    assert "final train step 29: loss" in text and "held-out at step 30: loss 0.6900" in text and "36 pairs" in text
    assert f"checkpoint:   {tmp_path / 'checkpoints' / '30'}" in text
    assert str(tmp_path / "metrics.jsonl") in text and str(tmp_path / "report.png") in text
    stopped = closing_summary(
        records[:10], total_steps=30, output_dir=tmp_path, seconds=1, latest_checkpoint=8, export_dir=None
    )
    assert stopped.startswith("run stopped early: 8 of 30 steps") and "(continue with --resume)" in stopped


def test_dropped_share_note():
    manifest = {"counts": {"input_rows": 100, "dropped": {"sequence_too_long": 50, "prompt_too_long": 7}}}
    note = dropped_share_note(manifest, "p.jsonl", 384, "drop")
    assert note.startswith("note: 57% of the pairs in p.jsonl (57 of 100) are longer than data.max_length=384")
    assert dropped_share_note({"counts": {"input_rows": 100, "dropped": {"sequence_too_long": 5}}}, "p", 9, "d") == ""


def test_output_folder_policy(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "data").mkdir()  # the tokenized-data cache alone is not a run
    assert claim_output_dir(out, resume=False, overwrite=False) == ""
    (out / "checkpoints").mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="already holds a run .*--resume.*--overwrite"):
        claim_output_dir(out, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="pass one"):
        claim_output_dir(out, resume=True, overwrite=True)
    assert claim_output_dir(out, resume=True, overwrite=False) == ""
    (out / "mine.txt").write_text("not ours")
    note = claim_output_dir(out, resume=False, overwrite=True)
    assert "removed the previous run's checkpoints/, metrics.jsonl" in note and "kept mine.txt" in note
    assert sorted(p.name for p in out.iterdir()) == ["data", "mine.txt"]
    with pytest.raises(ConfigError, match="is not empty"):
        claim_output_dir(out, resume=False, overwrite=False)


class FakeCheckpointer:
    """Steps whose restore raises (damaged) or returns the step, and step folders whose save never committed
    (`unfinished`); records what was set aside."""

    def __init__(self, tmp_path, steps, damaged=(), unfinished=()):
        self.directory, self.steps, self.damaged, self.moved = tmp_path / "checkpoints", list(steps), set(damaged), []
        self.unfinished = list(unfinished)

    def unfinished_steps(self):
        return list(self.unfinished)

    def all_steps(self):
        return sorted(self.steps, reverse=True)

    def read_meta(self, step):
        return {"config": {"train": {"steps": 10}}, "data_fingerprint": "abc"}

    def restore(self, step):
        if step in self.damaged:
            raise RuntimeError("outer wrapper") from ValueError(f"DATA_LOSS: step {step} truncated")
        return f"state {step}"

    def set_aside(self, step, destination):
        self.moved.append(step)
        (self.unfinished if step in self.unfinished else self.steps).remove(step)


def test_resume_falls_back_past_damaged_checkpoints_and_names_them(tmp_path):
    from rpo_jax.train.resume import NoUsableCheckpoint, ResumeRequest, restore_for_resume

    config, prints, said = {"train": {"steps": 10}}, {"data_fingerprint": "abc"}, []
    ckpt = FakeCheckpointer(tmp_path, [2, 4, 6], damaged={6, 4})
    found = restore_for_resume(ckpt, ckpt.restore, ResumeRequest(), config, prints, said.append)
    assert found == (2, "state 2") and ckpt.moved == [6, 4]
    assert said == [
        "--resume: step 6 (ValueError: DATA_LOSS: step 6 truncated); step 4 (ValueError: DATA_LOSS: step 4 "
        "truncated) cannot be read back; resuming from step 2, the newest complete earlier checkpoint (the "
        f"unreadable ones are kept in {tmp_path / 'set_aside_checkpoints'})"
    ]
    broken = FakeCheckpointer(tmp_path, [2, 4], damaged={2, 4})
    with pytest.raises(NoUsableCheckpoint, match=r"can be read back: step 4 \(ValueError.*; step 2 \(ValueError"):
        restore_for_resume(broken, broken.restore, ResumeRequest(), config, prints, said.append)
    named = FakeCheckpointer(tmp_path, [2, 4], damaged={4})
    with pytest.raises(NoUsableCheckpoint, match=r"--resume: no checkpoint .* step 4 \(ValueError"):
        restore_for_resume(named, named.restore, ResumeRequest(step=4), config, prints, said.append)
    assert named.moved == []  # a named step that fails is not replaced by another one


def test_resume_names_and_sets_aside_a_save_that_never_committed(tmp_path):
    """A step folder without its commit marker (in a bucket, a save cut off before commit_success.txt) is named and
    moved out of the way of the resumed run's own save of that step; the newest committed one is resumed."""
    from rpo_jax.train.resume import ResumeRequest, restore_for_resume

    said, ckpt = [], FakeCheckpointer(tmp_path, [2], unfinished=[3])
    config, prints = {"train": {"steps": 10}}, {"data_fingerprint": "abc"}
    found = restore_for_resume(ckpt, ckpt.restore, ResumeRequest(), config, prints, said.append)
    assert found == (2, "state 2") and ckpt.moved == [3]
    assert said == [
        f"--resume: skipped step 3 in {tmp_path / 'checkpoints'}: its save was cut off before it committed (no "
        f"commit marker); moved to {tmp_path / 'set_aside_checkpoints'}"
    ]
