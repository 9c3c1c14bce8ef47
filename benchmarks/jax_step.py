"""Our side of a benchmark: the real jitted train step (`rpo_jax.plan.step_timing`), compiled once, timed step by
step, round-robin over the modes compared."""

from __future__ import annotations

import statistics

import jax

from rpo_jax.config.schema import Config
from rpo_jax.plan.step_timing import PreparedStep, prepare_step
from rpo_jax.runtime.sharding import make_mesh


def prepare(cfg: Config, batch_np: dict, devices: list) -> PreparedStep:
    """Random weights, optimizer state and the compiled step for `batch_np` on a mesh of `devices`."""
    return prepare_step(cfg, batch_np, make_mesh(cfg.mesh, devices))


def time_steps(steps: dict[str, PreparedStep], warmup: int, timed: int, probe=None) -> list[float]:
    """Round-robin over the prepared steps (one step of each per round), so load changes hit every mode alike.

    `probe` (the peak-FLOPs matmul) runs once per timed round too: on a shared machine the peak that MFU divides by
    is then measured under the same load as the steps. Returns the probe's times.
    """
    for _ in range(warmup):
        for prepared in steps.values():
            prepared.run()
    probe_times = []
    for _ in range(timed):
        for prepared in steps.values():
            prepared.times.append(prepared.run())
        if probe is not None:
            probe_times.append(probe())
    return probe_times


def step_result(prepared: PreparedStep) -> dict:
    host = jax.device_get(prepared.last_metrics)
    loss_sum, loss_den = host["sums"]["loss"]
    return {
        "step_time_s": statistics.median(prepared.times),
        "step_times_s": prepared.times,
        "compile_time_s": prepared.compile_s,
        "memory_analysis": prepared.memory,
        "last_loss": float(loss_sum / loss_den),
        "skipped_steps": int(host["nonfinite_total"]),
    }


def trainable_params(prepared: PreparedStep) -> dict:
    """All parameters as one nested dict (LoRA factors beside their base), e.g. for `export_hf`."""
    p = prepared.policy
    return p.merged_params(prepared.state["params"], p.frozen)
