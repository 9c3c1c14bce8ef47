"""QLoRA (`lora.base_quantization`, rpo_jax/model/quantization.py): the quantizer's error bound, the quantized forward
against the dense forward on the dequantized weights, sharding, building from a checkpoint, and the config rules."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx
from synthetic import TINY_MODEL, make_batch, tiny_config
from trainer_fixtures import ROOT

from rpo_jax.config.loading import load_config
from rpo_jax.config.schema import ConfigError, LoraConfig, MeshConfig
from rpo_jax.io.params import save_params
from rpo_jax.model.llama import LAYER_WEIGHTS, Llama
from rpo_jax.model.quantization import dequantized, is_quantized_leaf, quantize_blocks
from rpo_jax.objective.logps import paired_logps
from rpo_jax.runtime.sharding import ShardingError, make_mesh
from rpo_jax.train.policy import build_policy

# TINY_MODEL: D 32, F 64, head_dim 8. Blocks of 4 inputs: the scales' embed axis (32 / 4 = 8) still splits over fsdp=8.
BLOCK = 4
MESH_1 = MeshConfig(data=1, fsdp=1, tensor=1)


def qlora_config(quantization: str, *, dtype: str = "float32", block: int = BLOCK):
    lora = {"rank": 4, "alpha": 8.0, "base_quantization": quantization, "quantization_block_size": block}
    model = {**TINY_MODEL, "param_dtype": dtype, "dtype": dtype}
    # The rank-4 factors are replicated over their rank axis: > 2% of this toy model's bytes.
    return tiny_config(
        model=model, lora=lora, train={"reference_mode": "lora_base"}, mesh={"max_replicated_fraction": 0.5}
    )


def with_random_adapters(policy, seed: int = 0):
    """The policy's LoRA factors with B random too, so the adapters change the output (B starts at 0)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), policy.trainable)


def scorer(policy, mesh, use_lora=True):
    """Summed log-probs [B, G] of (trainable, frozen, batch), compiled once for every call with the same shapes."""

    @jax.jit
    def score(trainable, frozen, batch):
        model = policy.merged_model(trainable, frozen)
        return paired_logps(model, batch, logits_chunk_size=16, use_lora=use_lora, mesh=mesh).logps

    return lambda *args: np.asarray(score(*args))


def dequantized_base(frozen: dict) -> dict:
    layers = {
        k: dequantized(v, LAYER_WEIGHTS[k][1]) if is_quantized_leaf(v) else v for k, v in frozen["layers"].items()
    }
    return {**frozen, "layers": layers}


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    """A random dense (fp32) tiny model saved as a params checkpoint: what `rpo-jax import-hf` writes."""
    cfg = qlora_config("none")
    path = tmp_path_factory.mktemp("qlora") / "base"
    save_params(path, nnx.state(Llama(cfg.model, rngs=nnx.Rngs(7))), cfg.model, LoraConfig())
    return str(path)


def nf4_codebook() -> np.ndarray:
    codes = jnp.arange(16, dtype=jnp.uint4).reshape(16, 1)
    return np.asarray(qwix.dequantize(qwix.QArray(codes, jnp.ones((1, 1), jnp.float32), qtype="nf4"))).ravel()


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantization_error_is_at_most_half_a_code_step(quantization):
    """Round to nearest code: |w - dequantize(quantize(w))| <= half the widest gap between neighbouring codes, times
    the block's scale. int8: codes step 1 (+-127.5 lands on +-128 and saturates to 127 or stays -128: half a step),
    scale = absmax / 127.5; nf4: the codebook's widest gap (-1 to -0.696) / 2 = 0.152, scale = absmax. Plus float32
    rounding of w / scale (<= 128 in code units, so <= 128 eps_32 of a step)."""
    lora = LoraConfig(rank=1, base_quantization=quantization, quantization_block_size=BLOCK)
    w = jax.random.normal(jax.random.key(0), (2, 32, 3, 8)) * 0.02  # [Y, D, H, Dh], blocks along D
    q = quantize_blocks(w, 1, lora, jnp.float32)
    half_gap = 0.5 if quantization == "int8" else np.diff(nf4_codebook()).max() / 2
    scale = np.repeat(np.asarray(q.scale), BLOCK, axis=1)  # one scale per block of 4 rows of D
    error = np.abs(np.asarray(q.dense()) - np.asarray(w))
    assert q.scale.shape == (2, 32 // BLOCK, 3, 8)
    assert np.all(error <= (half_gap + 128 * np.finfo(np.float32).eps) * scale)
    assert error.max() > 0.1 * half_gap * scale.max()  # rounding really happened


@pytest.mark.parametrize("quantization, dtype", [("int8", "float32"), ("nf4", "float32"), ("nf4", "bfloat16")])
def test_quantized_logps_equal_the_dense_forward_on_dequantized_weights(quantization, dtype):
    """The quantized model (LoRA on, adapters nonzero) against the same model with dense weights = dequantize(codes)
    in param_dtype. Both run the same arithmetic (`frozen_matmul` dequantizes in the scale's dtype, then casts to
    model.dtype, as the dense path casts its weights), so only XLA's freedom to order the same operations differently
    could separate them: a few ulps of each summed log-prob (16 tokens), 1e-6 relative in fp32, and in bf16 one
    ulp of the bf16 hidden states (2^-8 relative). Measured on CPU: bitwise equal in all three cases."""
    mesh = make_mesh(MESH_1, jax.devices()[:1])
    batch = make_batch(2, 2, 16, 128, seed=3)
    quantized = build_policy(qlora_config(quantization, dtype=dtype), mesh)
    dense = build_policy(qlora_config("none", dtype=dtype), mesh)  # same seed: the weights before quantization
    adapters = with_random_adapters(quantized)
    score_dense = scorer(dense, mesh)
    got = scorer(quantized, mesh)(adapters, quantized.frozen, batch)
    want = score_dense(adapters, dequantized_base(quantized.frozen), batch)
    rtol = 1e-6 if dtype == "float32" else 2**-8
    np.testing.assert_allclose(got, want, rtol=rtol)
    # ... and quantization really changed the model: by more than that tolerance (measured in fp32: int8 1e-3, nf4
    # 9e-3 of log-probs near -58; this random tiny model's logits are nearly flat, so both are small).
    shift = np.abs(got - score_dense(adapters, dense.frozen, batch)).max()
    assert shift > 10 * rtol * np.abs(want).max() if dtype == "float32" else shift > 0


def test_sharded_quantized_base_equals_one_device(dense_checkpoint):
    """The base read from a params checkpoint and quantized per shard on 8 devices (fsdp 8) holds the same codes and
    scales as on one device, sharded as the rules table says, and scores the same."""
    cfg = qlora_config("nf4")
    mesh_8, mesh_1 = make_mesh(cfg.mesh), make_mesh(MESH_1, jax.devices()[:1])
    sharded, single = build_policy(cfg, mesh_8, dense_checkpoint), build_policy(cfg, mesh_1, dense_checkpoint)
    for name, (axes, _) in LAYER_WEIGHTS.items():
        leaf = sharded.frozen["layers"][name]
        for part in ("codes", "scale"):
            spec = leaf[part].sharding.spec
            assert spec[1 + axes.index("embed")] == "fsdp", (name, part, spec)  # every linear map has an embed axis
            np.testing.assert_array_equal(np.asarray(leaf[part]), np.asarray(single.frozen["layers"][name][part]))
    assert sharded.frozen["layers"]["w_up_DF"]["codes"].shape == (2, 32 // 2, 64)  # two nf4 codes per byte
    batch = make_batch(8, 2, 16, 128, seed=1)
    adapters = with_random_adapters(single)
    on_8 = jax.device_put(adapters, sharded.trainable_shardings)
    got = scorer(sharded, mesh_8)(on_8, sharded.frozen, batch)
    np.testing.assert_allclose(got, scorer(single, mesh_1)(adapters, single.frozen, batch), rtol=1e-5)
    # The lora_base reference: LoRA off ignores the (random) adapters and scores the same quantized base as a policy
    # whose B factors are still zero.
    reference = scorer(sharded, mesh_8, use_lora=False)(on_8, sharded.frozen, batch)
    np.testing.assert_allclose(reference, scorer(sharded, mesh_8)(sharded.trainable, sharded.frozen, batch), rtol=1e-6)
    assert np.abs(reference - got).max() > 1e-3  # the adapters do change the policy


def test_quantized_base_from_params_checkpoint_equals_quantizing_it_whole(dense_checkpoint, tmp_path):
    """Layer-by-layer reads (TensorStore from a params checkpoint; safetensors from its HF export) give the codes
    and scales of quantizing each whole stacked weight at once."""
    from rpo_jax.io.hf_export import export_hf
    from rpo_jax.io.params import load_params_checkpoint

    cfg = qlora_config("int8")
    mesh = make_mesh(cfg.mesh)
    model_cfg, _, dense_state = load_params_checkpoint(dense_checkpoint, mesh)
    export_hf(dense_state, model_cfg, LoraConfig(), tmp_path / "hf")
    from_params = build_policy(cfg, mesh, dense_checkpoint).frozen
    from_hf = build_policy(cfg, mesh, str(tmp_path / "hf")).frozen
    dense = nnx.to_pure_dict(dense_state)
    for name, (_, n_in) in LAYER_WEIGHTS.items():
        whole = quantize_blocks(dense["layers"][name], n_in, cfg.lora, jnp.float32)
        for frozen in (from_params, from_hf):
            np.testing.assert_array_equal(np.asarray(frozen["layers"][name]["codes"]), np.asarray(whole.codes))
            np.testing.assert_array_equal(np.asarray(frozen["layers"][name]["scale"]), np.asarray(whole.scale))
    np.testing.assert_array_equal(np.asarray(from_params["embed_VD"]), np.asarray(dense["embed_VD"]))


def test_a_block_that_splits_no_mesh_axis_evenly_raises_naming_the_scale():
    """Blocks of 8: the scales' embed axis is 32 / 8 = 4, which fsdp=8 cannot split (the rules table applies to the
    scales as to the weights); blocks of 3 do not divide the input axes at all."""
    with pytest.raises(ShardingError, match=r"layers/\w+/scale: dimension embed=4 does not divide mesh axis fsdp=8"):
        build_policy(qlora_config("nf4", block=8), make_mesh(qlora_config("nf4").mesh))
    with pytest.raises(ConfigError, match=r"lora.quantization_block_size=3 does not divide wq_DHDh's input axis embed"):
        build_policy(qlora_config("nf4", block=3), make_mesh(MESH_1, jax.devices()[:1]))


def test_quantization_without_lora_is_one_clear_line(capsys):
    from rpo_jax.cli import main

    with pytest.raises(ConfigError, match="lora.base_quantization=nf4 quantizes the frozen base .* lora.rank is 0"):
        load_config(ROOT / "configs/base.yaml", ["lora.base_quantization=nf4"])
    with pytest.raises(ConfigError, match="lora.base_quantization must be one of none, int8, nf4, got 'fp4'"):
        load_config(ROOT / "configs/base.yaml", ["lora.rank=8", "lora.base_quantization=fp4"])
    assert main(["train", "--config", "configs/run/tiny_rpo.yaml", "--set", "lora.base_quantization=int8"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lora.base_quantization=int8" in err, err
    assert dataclasses.replace(LoraConfig(rank=8, base_quantization="nf4")).quantization_block_size == 64
