"""Mixed precision: fp32 master weights with bf16 compute, Adam moments in float32 or bfloat16, and a separate
reference stored in the compute dtype that scores exactly like the policy it was copied from."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from synthetic import TINY_MODEL, make_batch, tiny_config

from rpo_jax.config.schema import OptimConfig
from rpo_jax.objective.logps import paired_logps
from rpo_jax.runtime.sharding import make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy


def _moments(state) -> list:
    return [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]


def test_bf16_moments_are_stored_narrow_and_updated_in_fp32():
    params = {"w": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32).reshape(8, 8)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params) for i in range(3)]
    updates = {}
    for dtype in ("float32", "bfloat16"):
        optimizer, _ = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, moments_dtype=dtype), 10)
        state = optimizer.init(params)
        assert {x.dtype for x in _moments(state)} == {jnp.dtype(dtype)}
        p = params
        for g in grads:
            u, state = optimizer.update(g, state, p)
            p = optax.apply_updates(p, u)
        assert {x.dtype for x in _moments(state)} == {jnp.dtype(dtype)}
        assert p["w"].dtype == jnp.float32  # fp32 master weights stay fp32
        updates[dtype] = np.asarray(p["w"] - params["w"])
    # Same trajectory up to bf16 rounding of the stored moments (relative 2^-8).
    np.testing.assert_allclose(updates["bfloat16"], updates["float32"], rtol=2e-2, atol=1e-5)
    assert not np.array_equal(updates["bfloat16"], updates["float32"])


def test_separate_reference_in_compute_dtype_scores_like_fp32_master_policy():
    cfg = tiny_config(model={**TINY_MODEL, "param_dtype": "float32", "dtype": "bfloat16"})
    mesh = make_mesh(cfg.mesh)
    policy = build_policy(cfg, mesh)
    assert {x.dtype for x in jax.tree.leaves(policy.trainable)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(policy.reference)} == {jnp.dtype(jnp.bfloat16)}
    batch = make_batch(4, 2, 24, TINY_MODEL["vocab_size"])
    score = dict(logits_chunk_size=8, mesh=mesh)

    @jax.jit
    def both(trainable, reference):
        policy_model = policy.merged_model(trainable, policy.frozen)
        reference_model = policy.reference_model(trainable, policy.frozen, reference)
        return paired_logps(policy_model, batch, **score).logps, paired_logps(reference_model, batch, **score).logps

    policy_logps, reference_logps = both(policy.trainable, policy.reference)
    # Every weight is cast to bf16 where it is used, so the bf16 copy gives the same numbers, bit for bit.
    np.testing.assert_array_equal(np.asarray(policy_logps), np.asarray(reference_logps))
