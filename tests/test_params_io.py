"""Orbax params checkpoints: sharded save/restore, config files, and clear errors on mismatched models; HF
folders as the same loaders' other input (build_policy's init_checkpoint)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from llama_hf_fixtures import params_and_hf_folder, tiny_config
from synthetic import tiny_config as run_config

from rpo_jax.config.schema import LoraConfig, MeshConfig
from rpo_jax.io.params import (
    CheckpointMismatchError,
    is_hf_folder,
    read_lora_config,
    read_model_config,
    restore_params,
    save_params,
)
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import init_sharded, make_mesh, state_shardings
from rpo_jax.train.policy import build_policy


def _abstract(cfg, lora=None):
    lora = lora or LoraConfig()
    return nnx.split(nnx.eval_shape(lambda: Llama(cfg, lora, rngs=nnx.Rngs(0))))[1]


def test_save_restore_round_trip_into_other_sharding(tmp_path):
    cfg, lora = tiny_config(), LoraConfig(rank=2, target_modules=("q", "down"))
    mesh_a = make_mesh(MeshConfig(fsdp=4, tensor=2))
    _, state, _ = init_sharded(lambda: Llama(cfg, lora, rngs=nnx.Rngs(7)), mesh_a)
    save_params(tmp_path / "ckpt", state, cfg, lora)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the temp folder was renamed away
    assert read_model_config(tmp_path / "ckpt") == cfg
    assert read_lora_config(tmp_path / "ckpt") == lora
    mesh_b = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    abstract = _abstract(cfg, lora)
    shardings = state_shardings(abstract, mesh_b)
    restored = restore_params(tmp_path / "ckpt", abstract, shardings)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state), nnx.to_pure_dict(restored))
    got = jax.tree.map(lambda x: x.sharding, nnx.to_pure_dict(restored))
    assert got == nnx.to_pure_dict(shardings)
    assert got["layers"]["wq_DHDh"].mesh.shape == mesh_b.shape
    assert isinstance(nnx.to_pure_dict(abstract)["embed_VD"], jax.ShapeDtypeStruct)  # input state untouched


def test_refuses_to_overwrite(tmp_path):
    cfg = tiny_config()
    state = nnx.state(Llama(cfg, rngs=nnx.Rngs(0)))
    save_params(tmp_path / "ckpt", state, cfg, LoraConfig())
    with pytest.raises(FileExistsError, match="ckpt"):
        save_params(tmp_path / "ckpt", state, cfg, LoraConfig())


@pytest.mark.parametrize(
    "other, message",
    [
        (
            dict(num_key_value_heads=4),
            r"parameter layers/wk_DKDh is \(2, 32, 2, 16\) float32 in the checkpoint but "
            r"\(2, 32, 4, 16\) float32",
        ),
        (
            dict(param_dtype="bfloat16"),
            r"parameter embed_VD is \(96, 32\) float32 in the checkpoint but "
            r"\(96, 32\) bfloat16",
        ),
        (dict(tie_word_embeddings=True), r"missing \[\], unexpected \['lm_head_DV'\]"),
    ],
)
def test_mismatched_model_names_the_parameter(tmp_path, other, message):
    cfg = tiny_config()
    save_params(tmp_path / "ckpt", nnx.state(Llama(cfg, rngs=nnx.Rngs(0))), cfg, LoraConfig())
    wrong = dataclasses.replace(cfg, **other)
    abstract = _abstract(wrong)
    mesh = make_mesh(MeshConfig())
    with pytest.raises(CheckpointMismatchError, match=message):
        restore_params(tmp_path / "ckpt", abstract, state_shardings(abstract, mesh))


def test_base_checkpoint_into_lora_model_via_param_filter(tmp_path):
    cfg = tiny_config()
    base = Llama(cfg, rngs=nnx.Rngs(0))
    save_params(tmp_path / "ckpt", nnx.state(base), cfg, LoraConfig())
    lora_abstract = nnx.eval_shape(lambda: Llama(cfg, LoraConfig(rank=2), rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointMismatchError, match=r"missing \['layers/lora_a_w_down_FD'"):
        full = nnx.state(lora_abstract)
        restore_params(tmp_path / "ckpt", full, state_shardings(full, make_mesh(MeshConfig())))
    base_only = nnx.state(lora_abstract, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    restored = restore_params(tmp_path / "ckpt", base_only, state_shardings(base_only, make_mesh(MeshConfig())))
    np.testing.assert_array_equal(restored["layers"]["wq_DHDh"][...], base.layers.wq_DHDh[...])
    assert restored["embed_VD"][...].dtype == jnp.float32


@pytest.mark.parametrize(
    "sections",
    [
        dict(
            lora={"rank": 2}, train={"reference_mode": "lora_base"}, mesh={"max_replicated_fraction": 0.25}
        ),  # tiny LoRA factors
        dict(train={"reference_mode": "separate"}),
    ],
    ids=["lora", "full"],
)
def test_build_policy_from_hf_folder_equals_params_checkpoint(tmp_path, sections):
    cfg = run_config(**sections)
    ckpt, hf, saved = params_and_hf_folder(cfg.model, tmp_path, seed=5)
    assert is_hf_folder(hf) and not is_hf_folder(ckpt) and not is_hf_folder(tmp_path / "missing")
    mesh = make_mesh(cfg.mesh)
    from_ckpt, from_hf = build_policy(cfg, mesh, str(ckpt)), build_policy(cfg, mesh, str(hf))
    for part in ("trainable", "frozen", "reference"):
        a, b = getattr(from_ckpt, part), getattr(from_hf, part)
        assert jax.tree.structure(a) == jax.tree.structure(b), part
        jax.tree.map(np.testing.assert_array_equal, a, b)
        assert jax.tree.map(lambda x: x.sharding, a) == jax.tree.map(lambda x: x.sharding, b), part
    base = from_hf.merged_params(from_hf.trainable, from_hf.frozen)
    np.testing.assert_array_equal(base["layers"]["wq_DHDh"], saved["layers"]["wq_DHDh"])  # not a random init


def test_hf_init_checkpoint_must_have_the_run_architecture(tmp_path):
    cfg = run_config()
    _, hf, saved = params_and_hf_folder(cfg.model, tmp_path)
    mesh = make_mesh(cfg.mesh)
    wrong = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_key_value_heads=4, rms_norm_eps=1e-6))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"hf/config\.json: .*architecture differs.*: "
        r"num_key_value_heads \(model 4, config\.json 2\); "
        r"rms_norm_eps \(model 1e-06, config\.json 1e-05\)$",
    ):
        build_policy(wrong, mesh, str(hf))
    rope = dataclasses.replace(cfg.model.rope_parameters, rope_theta=5e5)
    with pytest.raises(CheckpointMismatchError, match=r"rope_parameters\.rope_theta \(model 500000\.0"):
        build_policy(
            dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, rope_parameters=rope)), mesh, str(hf)
        )
    # How to run the model is the run's choice: the weights are cast to its param_dtype.
    run = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, param_dtype="bfloat16", dtype="bfloat16", scan_layers=False, initializer_range=0.5
        ),
    )
    policy = build_policy(run, mesh, str(hf))
    assert {x.dtype for x in jax.tree.leaves(policy.trainable)} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(policy.trainable["embed_VD"], saved["embed_VD"].astype(jnp.bfloat16))
