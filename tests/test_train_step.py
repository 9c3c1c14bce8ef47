"""The jitted train step: sharding invariance, gradient accumulation, reference modes, LoRA, non-finite skips."""

import math

import jax
import numpy as np
import pytest
from synthetic import make_batch, tiny_config

from rpo_jax.config.schema import MeshConfig
from rpo_jax.objective.losses import finalize_metrics
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.step import init_train_state, make_train_step


def run_steps(cfg, batches, devices=None, mesh_cfg=None):
    mesh = make_mesh(mesh_cfg or cfg.mesh, devices)
    policy = build_policy(cfg, mesh)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, state_sh = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    step_fn = None
    records = []
    for batch in batches:
        b_sh = batch_shardings(batch, mesh)
        global_batch = {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()}
        step_fn = step_fn or make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh)
        state, metrics = step_fn(state, policy.frozen, policy.reference, global_batch)
        host = jax.device_get(metrics)
        records.append(
            {
                **finalize_metrics(host["sums"]),
                "grad_norm": float(host["grad_norm"]),
                "skipped": bool(host["skipped"]),
                "nonfinite_total": int(host["nonfinite_total"]),
            }
        )
    return jax.device_get(state["params"]), records, step_fn


def assert_trees_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


# adam_eps=1 makes the first updates ~linear in the gradient: plain Adam maps ~1e-9 gradient entries to ±lr
# whatever their rounding, which would hide (or fake) a sharding bug behind float noise.
LINEAR_OPTIM = {"learning_rate": 1e-2, "warmup_ratio": 0.0, "adam_eps": 1.0}


@pytest.fixture(scope="module")
def single_device_run():
    cfg = tiny_config(loss={"loss_type": ["rpo"], "loss_weights": [1.0]}, optim=LINEAR_OPTIM)
    batches = [make_batch(8, 2, 24, 128, seed=s) for s in range(2)]
    params, records, _ = run_steps(
        cfg, batches, devices=jax.devices()[:1], mesh_cfg=MeshConfig(data=1, fsdp=1, tensor=1)
    )
    return cfg, batches, params, records


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_equals_single_device(mesh, single_device_run):
    cfg, batches, ref_params, ref_records = single_device_run
    params, records, _ = run_steps(cfg, batches, mesh_cfg=MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]))
    for r, rr in zip(records, ref_records):
        assert r["loss"] == pytest.approx(rr["loss"], abs=1e-6)
        assert r["grad_norm"] == pytest.approx(rr["grad_norm"], abs=1e-6)
    assert_trees_close(params, ref_params, atol=1e-6)


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_big_batch(accum):
    batches = [make_batch(8, 2, 24, 128, seed=s) for s in range(2)]
    params1, rec1, _ = run_steps(tiny_config(optim=LINEAR_OPTIM), batches)
    params_k, rec_k, _ = run_steps(tiny_config(optim=LINEAR_OPTIM, train={"grad_accum_steps": accum}), batches)
    # rewards/accuracies is left out: at step 0 every margin is 0 up to float noise (~1e-7: the reference and
    # policy forwards are separate XLA programs), so its strict `>` counts noise, differently per program.
    for a, b in zip(rec1, rec_k):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen", "logits/rejected", "nll"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert_trees_close(params_k, params1, atol=1e-6)


def test_step0_loss_is_ln2_and_rewards_zero():
    _, records, _ = run_steps(tiny_config(), [make_batch(8, 2, 16, 128)])
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(records[0][key]) < 1e-6, key  # docs/algorithms.md §3: inline-reference tolerance


def test_compiles_once_for_a_shape():
    batches = [make_batch(8, 2, 16, 128, seed=s) for s in range(3)]
    _, records, step_fn = run_steps(tiny_config(), batches)
    assert step_fn._cache_size() == 1  # also proves the initial state already had the step's in/out shardings
    assert records[2]["loss"] < records[0]["loss"]  # same shape, new data, still learning


def test_lora_reference_is_base_and_adapters_learn():
    # At this toy width the rank-4 B factors (replicated over the rank axis, tensor=1) are >2% of all bytes.
    cfg = tiny_config(
        lora={"rank": 4, "alpha": 8.0}, train={"reference_mode": "lora_base"}, mesh={"max_replicated_fraction": 0.25}
    )
    batch = make_batch(8, 2, 16, 128)
    params, records, _ = run_steps(cfg, [batch, batch])
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)  # B = 0: policy == base exactly
    assert records[0]["grad_norm"] > 0  # LoRA B receives gradient at step 0 (docs/algorithms.md §8)
    assert set(params["layers"]) == {k for k in params["layers"] if k.startswith("lora_")}
    assert records[1]["loss"] < records[0]["loss"]


def test_precomputed_reference_and_nonfinite_skip():
    cfg = tiny_config(train={"reference_mode": "precomputed"})
    good = make_batch(8, 2, 16, 128, with_ref=True)
    bad = dict(good, ref_logps=np.full_like(good["ref_logps"], np.nan))
    params_before, _, _ = run_steps(cfg, [good])
    params_after, records, _ = run_steps(cfg, [good, bad])
    assert not records[0]["skipped"] and records[1]["skipped"]
    assert records[1]["nonfinite_total"] == 1
    assert_trees_close(params_after, params_before, atol=0)  # the NaN step changed nothing


def test_separate_reference_is_not_donated():
    cfg = tiny_config()
    mesh = make_mesh(cfg.mesh)
    policy = build_policy(cfg, mesh)
    ref_before = jax.device_get(policy.reference)
    optimizer, schedule = make_optimizer(cfg.optim, 10)
    state, state_sh = init_train_state(policy, optimizer, 0, mesh)
    batch = make_batch(8, 2, 16, 128)
    b_sh = batch_shardings(batch, mesh)
    step = make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh)
    state, _ = step(state, policy.frozen, policy.reference, {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()})
    assert_trees_close(jax.device_get(policy.reference), ref_before, atol=0)
