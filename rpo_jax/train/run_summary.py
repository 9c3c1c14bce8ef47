"""What a person reads about a run as it goes and when it ends: held-out results at each evaluation, the share of
pairs the length limit dropped, and a closing summary (steps, final metrics, wall time, where everything is)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.records.truncation import DROP_PROMPT_TOO_LONG, DROP_SEQUENCE_TOO_LONG
from rpo_jax.train.mixture_report import MIXTURE_REPORT, mixture_lines

# Say so when the length limit drops more than this share of a pair file.
DROPPED_SHARE_NOTE = 0.10


def metric_text(record: dict, prefix: str = "") -> str:
    """'loss 0.6550, reward accuracy 0.760, reward margin 0.214' from a metrics record."""
    parts = [
        f"{label} {record[prefix + key]:{fmt}}"
        for key, label, fmt in (
            ("loss", "loss", ".4f"),
            ("rewards/accuracies", "reward accuracy", ".3f"),
            ("rewards/margins", "reward margin", ".3f"),
        )
        if prefix + key in record
    ]
    return ", ".join(parts)


def eval_line(record: dict) -> str:
    pairs = record.get("eval/num_pairs")
    over = f" over {int(pairs)} pairs" if pairs is not None else ""
    return f"held-out at step {record['step']}: {metric_text(record, 'eval/')}{over}{mirror_text(record)}"


def mirror_text(record: dict) -> str:
    """'; mirror-unit accuracy 0.780 [0.707, 0.839] over 150 units (chance 0.5)' on mirrored RPO pairs, else ''.
    The instruction-reading measure: pair-level accuracy is 0.5 there for any model that ignores the instruction
    (docs/algorithms.md §4)."""
    if "eval/mirror/accuracy" not in record:
        return ""
    low, high, units = (record[f"eval/mirror/{k}"] for k in ("accuracy_low", "accuracy_high", "units"))
    return (
        f"; mirror-unit accuracy {record['eval/mirror/accuracy']:.3f} [{low:.3f}, {high:.3f}] over {int(units)} "
        "units (chance 0.5)"
    )


def dropped_share_note(manifest: dict, pairs_path: str, max_length: int, truncation: str) -> str:
    """A line when `data.max_length` dropped a large share of `pairs_path` (else '')."""
    counts = manifest["counts"]
    too_long = sum(counts["dropped"].get(reason, 0) for reason in (DROP_PROMPT_TOO_LONG, DROP_SEQUENCE_TOO_LONG))
    total = counts["input_rows"]
    if not total or too_long / total <= DROPPED_SHARE_NOTE:
        return ""
    return (
        f"note: {too_long / total:.0%} of the pairs in {pairs_path} ({too_long} of {total}) are longer than "
        f"data.max_length={max_length} tokens and were dropped (data.truncation={truncation}); raise "
        "data.max_length or set data.truncation=keep_start to keep more of them"
    )


def closing_summary(
    records: list[dict],
    *,
    total_steps: int,
    output_dir: Path,
    seconds: float,
    latest_checkpoint: int | None,
    export_dir: Path | None,
    mixture: dict | None = None,
) -> str:
    """The lines printed when `rpo-jax train` ends. A finished run always checkpoints its last step, so a
    latest checkpoint short of `total_steps` means the run was stopped (and saved there). `mixture`: the realised
    proportions of `data.sources` (`mixture_report`)."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    done = latest_checkpoint or 0
    stopped_early = done != total_steps
    minutes, secs = divmod(int(round(seconds)), 60)
    status = "stopped early" if stopped_early else "finished"
    lines = [f"run {status}: {done} of {total_steps} steps in {minutes}m{secs:02d}s"]
    if train:
        lines.append(f"  final train step {train[-1]['step']}: {metric_text(train[-1])}")
    if evals:
        lines.append(f"  {eval_line(evals[-1])}")
    lines += mixture_lines(mixture)
    checkpoint = output_dir / "checkpoints" / str(latest_checkpoint) if latest_checkpoint is not None else None
    lines.append(f"  checkpoint:   {checkpoint or 'none'}" + (" (continue with --resume)" if stopped_early else ""))
    lines.append(f"  HF export:    {export_dir or 'not written'}")
    lines.append(f"  metrics:      {output_dir / 'metrics.jsonl'}")
    lines.append(f"  report:       {output_dir / 'report.png'}")
    if mixture is not None:
        lines.append(f"  mixture:      {output_dir / MIXTURE_REPORT}")
    return "\n".join(lines)
