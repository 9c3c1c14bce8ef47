"""Our side of a benchmark: the real jitted train step (`make_train_step`), compiled once, timed step by step."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax

from rpo_jax.config.schema import Config
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import PolicyParams, build_policy
from rpo_jax.train.step import init_train_state, make_train_step


@dataclasses.dataclass
class PreparedStep:
    """A compiled train step with its live state; `run()` executes one step and returns its wall time."""

    cfg: Config
    policy: PolicyParams
    compiled: Any
    state: Any
    batch: dict
    batch_np: dict
    compile_s: float
    memory: dict
    times: list[float] = dataclasses.field(default_factory=list)
    last_metrics: Any = None

    def run(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.policy.frozen, self.policy.reference, self.batch)
        jax.block_until_ready((self.state, metrics))
        elapsed = time.perf_counter() - start
        self.last_metrics = metrics
        return elapsed


def memory_summary(compiled) -> dict:
    """XLA's static buffer assignment for the step: arguments + outputs − donated aliases + temporaries."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {f: int(getattr(analysis, f, 0) or 0) for f in fields}
    out["compiled_peak_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        - out["alias_size_in_bytes"]
        + out["temp_size_in_bytes"]
    )
    return out


def prepare(cfg: Config, batch_np: dict, devices: list) -> PreparedStep:
    """Builds random weights, optimizer state and the compiled step for `batch_np` on `devices`."""
    mesh = make_mesh(cfg.mesh, devices)
    policy = build_policy(cfg, mesh)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, state_sh = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    b_sh = batch_shardings(batch_np, mesh)
    batch = {k: jax.device_put(v, b_sh[k]) for k, v in batch_np.items()}
    step_fn = make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh)
    start = time.perf_counter()
    compiled = step_fn.lower(state, policy.frozen, policy.reference, batch).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(state)
    return PreparedStep(cfg, policy, compiled, state, batch, batch_np, compile_s, memory_summary(compiled))


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
