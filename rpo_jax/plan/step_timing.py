"""The real jitted train step (`make_train_step`) on a fixed batch, compiled once and timed step by step, with a
full-length synthetic batch of a config's shapes: what `rpo-jax doctor` and `rpo-jax bench` measure."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rpo_jax.config.schema import Config
from rpo_jax.plan.planning import group_size
from rpo_jax.runtime.sharding import batch_shardings
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


def compiled_memory(compiled) -> dict:
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


def prepare_step(cfg: Config, batch_np: dict, mesh: Mesh, init_checkpoint: str = "") -> PreparedStep:
    """Builds the weights (random, or the non-LoRA ones from `init_checkpoint` as training does), the optimizer
    state and the step compiled for `batch_np` on `mesh`."""
    policy = build_policy(cfg, mesh, init_checkpoint)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, state_sh = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    b_sh = batch_shardings(batch_np, mesh)
    batch = {k: jax.device_put(v, b_sh[k]) for k, v in batch_np.items()}
    step_fn = make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh)
    start = time.perf_counter()
    compiled = step_fn.lower(state, policy.frozen, policy.reference, batch).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(state)
    return PreparedStep(cfg, policy, compiled, state, batch, batch_np, compile_s, compiled_memory(compiled))


def full_length_batch(cfg: Config, pairs: int, length: int, seed: int = 0) -> dict:
    """A `[pairs, G, length]` batch in which every row holds `length` real tokens (random ids; the first quarter
    is the group's shared prompt, the rest its scored response): the most work and memory a batch padded to
    `length` can cost, and no padding to discount from tokens/s."""
    G = group_size(cfg)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, cfg.model.vocab_size, size=(pairs, G, length), dtype=np.int32)
    prompt = length // 4
    tokens[:, :, :prompt] = tokens[:, :1, :prompt]
    loss_mask = np.zeros((pairs, G, length), bool)
    loss_mask[:, :, prompt:] = True
    batch = {
        "tokens": tokens,
        "loss_mask": loss_mask,
        "segment_ids": np.ones((pairs, G, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (pairs, G, length)).copy(),
        "margin": rng.integers(0, 5, size=(pairs,), dtype=np.int32),
    }
    if cfg.train.reference_mode == "precomputed":  # magnitudes of real sums of log-probs keep the loss finite
        batch["ref_logps"] = -rng.uniform(1.0, 3.0, size=(pairs, G)).astype(np.float32) * (length - prompt)
    return batch
