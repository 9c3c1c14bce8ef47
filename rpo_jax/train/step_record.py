"""One train step's metrics as a record, and the checks every step's record must pass.

`step_record` turns the metric sums a step returned into the record written to metrics.jsonl and stops the run
after too many consecutive non-finite steps; `check_step0` asserts the invariant of step 0 (policy == reference,
docs/algorithms.md §3), where a wrong reference dtype, sharding or dropout shows first.
"""

from __future__ import annotations

import math

from data_pipeline.errors import UserError
from rpo_jax.config.schema import Config
from rpo_jax.objective.losses import finalize_metrics


class TrainingStopped(UserError, RuntimeError):
    """Too many consecutive non-finite steps; the last good checkpoint is intact."""


def step_record(cfg: Config, step: int, host: dict, tokens: int, seconds: float, latest_checkpoint: int | None) -> dict:
    """The metrics.jsonl record of `step` from its host-side metrics; raises TrainingStopped after
    `train.max_consecutive_nonfinite` non-finite steps in a row (naming the last good checkpoint)."""
    record = {"step": step, **finalize_metrics(host["sums"])}
    record.update(
        grad_norm=float(host["grad_norm"]),
        learning_rate=float(host["learning_rate"]),
        skipped=bool(host["skipped"]),
        nonfinite_total=int(host["nonfinite_total"]),
        tokens_per_s=tokens / max(seconds, 1e-9),
        step_time=seconds,
    )
    if int(host["nonfinite_run"]) >= cfg.train.max_consecutive_nonfinite:
        raise TrainingStopped(
            f"step {step}: {int(host['nonfinite_run'])} consecutive non-finite losses/gradients "
            f"(train.max_consecutive_nonfinite={cfg.train.max_consecutive_nonfinite}); "
            f"last good checkpoint: step {latest_checkpoint}"
        )
    return record


def check_step0(cfg: Config, record: dict) -> None:
    """Policy == reference at step 0: all rewards are 0, so DPO-family losses sit at their h=0 value.

    "0" up to float rounding: the two forwards are separate XLA programs, so h differs by ~1e-7 relative to
    the summed log-probs (thousands of nats for long responses). docs/algorithms.md §3: 1e-6 inline, 1e-3 when the
    reference was precomputed (possibly at another batch shape).
    """
    if cfg.train.reference_mode == "none":
        return
    rel = 1e-3 if cfg.train.reference_mode == "precomputed" else 1e-6
    scale = max(abs(record["logps/chosen"]), abs(record["logps/rejected"]), 1.0)
    tol = cfg.loss.beta * rel * scale
    for key in ("rewards/chosen", "rewards/rejected"):
        if abs(record[key]) > tol:
            raise RuntimeError(
                f"step 0: {key}={record[key]:.3g} but policy == reference should give 0 "
                f"(|tol| {tol:.2g}; reference dtype/sharding differs from the policy, or dropout "
                "is on)"
            )
    if tuple(cfg.loss.loss_type) == ("sigmoid",) and cfg.loss.label_smoothing == 0:
        if abs(record["loss"] - math.log(2)) > tol + 1e-6:
            raise RuntimeError(f"step 0: DPO loss {record['loss']:.6f} != ln 2 with policy == reference")
