"""AdamW with linear warmup and cosine / linear / constant decay, global-norm clipping, decay masks, and the
storage dtype of its moments (`optim.moments_dtype`).

Mixed precision: weights are stored in `model.param_dtype` and cast to `model.dtype` inside each matmul, so with
param_dtype float32 and dtype bfloat16 the stored weights are fp32 master weights, gradients and their micro-batch
sums are fp32, and Adam's update runs in fp32. bf16 keeps fp32's exponent range, so no loss scaling is applied (it
exists for float16). `moments_dtype: bfloat16` halves the moments' memory: they are stored in bf16 and widened to
fp32 for each update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rpo_jax.config.schema import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.learning_rate)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup])


def weight_decay_mask(params) -> dict:
    """Decay matrices only: norms (and anything 1-D per layer) are excluded, as HF Trainer does."""

    def decays(path, _leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        return "norm" not in name

    return jax.tree_util.tree_map_with_path(decays, params)


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def stored_in(dtype, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` whose floating state (Adam's mu and nu) is kept in `dtype` between steps; each update widens it
    to float32, runs `inner`, and narrows the new state again (integer counters are left alone)."""

    def init(params):
        return _cast_floats(inner.init(params), dtype)

    def update(updates, state, params=None):
        updates, new_state = inner.update(updates, _cast_floats(state, jnp.float32), params)
        return updates, _cast_floats(new_state, dtype)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        mask=weight_decay_mask,
    )
    transform = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else optax.identity(),
        stored_in(jnp.dtype(cfg.moments_dtype), adamw),
    )
    return transform, schedule
