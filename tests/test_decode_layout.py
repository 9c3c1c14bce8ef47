"""The sampler's decode layout (`rpo_jax.generate.decode_weights`): per-layer weights with q/k/v and gate/up fused,
LoRA factors beside them, a quantized base kept as stored. Cached decoding must give the model's own forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rpo_jax.config.schema import LoraConfig, MeshConfig, ModelConfig
from rpo_jax.generate.cached_forward import empty_cache, forward_with_cache
from rpo_jax.generate.decode_weights import FUSED_GATE_UP, FUSED_QKV, decode_weights
from rpo_jax.generate.sampler import left_pad
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import init_sharded, make_mesh

CFG = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.05,
)
PAD = 0
PROMPTS = [[5, 17, 42, 9, 77, 3, 120], [64, 2], [8, 8, 30, 101], [7, 99]]
CONTINUATION = [[11, 12], [21, 22], [31, 32], [41, 42]]


def cached_logits(model, mesh, use_lora):
    """Logits after the prefill of PROMPTS and after each teacher-forced step of CONTINUATION, through the cache."""
    P, steps = 8, len(CONTINUATION[0])
    tokens_BP, segments_BP = (jnp.asarray(a) for a in left_pad(PROMPTS, PAD, P))
    B = len(PROMPTS)
    weights = decode_weights(model, mesh, use_lora)
    step = jax.jit(functools.partial(forward_with_cache, model.cfg, lora_scale=model.lora_scale if use_lora else 0.0))
    cache = empty_cache(model.cfg, B, P + steps, mesh)
    segments_BS = jnp.concatenate([segments_BP, jnp.ones((B, steps), jnp.int32)], axis=1)
    positions_BP = jnp.maximum(jnp.cumsum(segments_BP, axis=1) - 1, 0)
    logits, cache = step(weights, tokens_BP, positions_BP, segments_BP, segments_BS, cache, 0)
    out = [logits]
    for t in range(steps):
        fed = jnp.asarray([[c[t]] for c in CONTINUATION])
        positions = jnp.asarray([[len(p) + t] for p in PROMPTS])
        logits, cache = step(weights, fed, positions, jnp.ones((B, 1), jnp.int32), segments_BS, cache, P + t)
        out.append(logits)
    return weights, np.stack(out)


def full_forward_logits(model, use_lora):
    """The same logits from the model's own forward, each sequence alone and right-padded."""
    forward = nnx.jit(lambda m, t: m(t, jnp.arange(t.shape[1])[None], use_lora=use_lora))
    out = []
    for t in range(len(CONTINUATION[0]) + 1):
        rows = []
        for prompt, more in zip(PROMPTS, CONTINUATION):
            seq = prompt + more[:t]
            rows.append(forward(model, jnp.asarray([seq + [PAD] * (12 - len(seq))]))[0, len(seq) - 1])
        out.append(rows)
    return np.asarray(out)


def with_trained_adapters(model):
    """LoRA B factors start at zero (adapted == base); random ones make the adapters change the logits."""
    key = jax.random.key(5)
    for name, variable in vars(model.layers).items():
        if name.startswith("lora_b_"):
            key, sub = jax.random.split(key)
            variable[...] = 0.05 * jax.random.normal(sub, variable.shape, variable.dtype)
    return model


def test_cached_logits_equal_full_forward():
    """Prefill + teacher-forced decode steps through the cache give the full forward's logits, row by row."""
    model = Llama(CFG, rngs=nnx.Rngs(3))
    one_device = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, got = cached_logits(model, one_device, use_lora=True)
    np.testing.assert_allclose(got, full_forward_logits(model, use_lora=True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quantization", ["none", "int8"])
@pytest.mark.parametrize("use_lora", [True, False])
def test_adapters_and_a_quantized_base_decode_as_the_model_computes(quantization, use_lora):
    lora = LoraConfig(rank=4, alpha=8.0, base_quantization=quantization, quantization_block_size=16)
    model = with_trained_adapters(Llama(CFG, lora, rngs=nnx.Rngs(1)))
    one_device = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    weights, got = cached_logits(model, one_device, use_lora)
    want = full_forward_logits(model, use_lora)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
    layer = weights.layers[0]
    # Dense weights are fused; a quantized base is kept as stored (fusing it would need it dequantized).
    assert (FUSED_QKV in layer and FUSED_GATE_UP in layer) == (quantization == "none")
    assert any(name.startswith("lora_") for name in layer) == use_lora
    if use_lora:
        base = full_forward_logits(model, use_lora=False)
        assert np.abs(want - base).max() > 1e-3, "adapters too small to tell adapted from base"


def test_tensor_parallel_weights_fuse_by_kv_head_and_decode_as_one_device():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    graphdef, state, _ = init_sharded(lambda: Llama(CFG, rngs=nnx.Rngs(2)), mesh)
    sharded = nnx.merge(graphdef, state)
    weights, got = cached_logits(sharded, mesh, use_lora=True)
    qkv = weights.layers[1][FUSED_QKV]
    assert qkv.shape == (64, 2, 2 + 2, 16)  # [D, K, G + 2, Dh]
    assert qkv.sharding.spec[1] == "tensor", qkv.sharding.spec  # each device holds whole kv groups
    assert weights.layers[1][FUSED_GATE_UP].sharding.spec[2] == "tensor"
    np.testing.assert_allclose(got, full_forward_logits(sharded, use_lora=True), atol=2e-5, rtol=2e-5)
