"""One forward pass of new tokens through a Llama that reads and writes a KV cache (the sampler's prefill and decode
steps), on the decode layout of its weights (`rpo_jax.generate.decode_weights`).

The cache is one (keys, values) pair per layer, each [B, K, S, Dh] (S: prompt and room for new tokens). Keys of a
kv head lie contiguous along S, so both attention matmuls read them as they are: with the training layout
[B, S, K, Dh] XLA:CPU transposed every layer's cache on every token (16 ms of a 140 ms step on SmolLM2-135M,
batch 32). Layers run in a Python loop, so each layer's cache is its own buffer, updated in place.

The arithmetic is the model's (`rpo_jax.model.llama.decoder_layer`): same norms, RoPE, projections (LoRA delta per
projection) and MLP; attention is dense with an explicit mask, computed like `jax.nn.dot_product_attention`'s xla
path (fp32 scores, probabilities cast back). tests/test_decode_layout.py checks the logits against the full forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.config.schema import ModelConfig
from rpo_jax.generate.decode_weights import FUSED_GATE_UP, FUSED_QKV, DecodeWeights
from rpo_jax.model.attention import attention_mask
from rpo_jax.model.llama import DTYPES, apply_rope, project, rms_norm, rope_cos_sin, rope_inv_freq, with_lora_delta
from rpo_jax.runtime.sharding import BATCH_AXES

Cache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer: (keys, values), each [B, K, S, Dh]


def empty_cache(cfg: ModelConfig, batch: int, length: int, mesh: Mesh) -> Cache:
    """Zeroed per-layer keys and values [B, K, S, Dh]: rows split like training batches, kv heads over `tensor`
    where they divide it."""
    kv_axis = "tensor" if cfg.num_key_value_heads % mesh.shape["tensor"] == 0 else None
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES, kv_axis, None, None))
    shape = (batch, cfg.num_key_value_heads, length, cfg.head_dim)

    def zeros():
        return jax.lax.with_sharding_constraint(jnp.zeros(shape, DTYPES[cfg.dtype]), sharding)

    return tuple((zeros(), zeros()) for _ in range(cfg.num_hidden_layers))


def _qkv(cfg: ModelConfig, w: dict, h_BTD, lora_scale: float):
    """(q [B, T, H, Dh], k [B, T, K, Dh], v [B, T, K, Dh]) before RoPE."""
    B, T, _ = h_BTD.shape
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if FUSED_QKV not in w:
        q = project(h_BTD, w, "wq_DHDh", lora_scale, "btd,dhk->bthk")
        k = project(h_BTD, w, "wk_DKDh", lora_scale, "btd,dhk->bthk")
        v = project(h_BTD, w, "wv_DKDh", lora_scale, "btd,dhk->bthk")
        return q, k, v
    G = H // K
    qkv_BTKJDh = jnp.einsum("btd,dkjh->btkjh", h_BTD, w[FUSED_QKV].astype(h_BTD.dtype))
    q = qkv_BTKJDh[:, :, :, :G].reshape(B, T, H, Dh)
    k, v = qkv_BTKJDh[:, :, :, G], qkv_BTKJDh[:, :, :, G + 1]
    q = with_lora_delta(q, h_BTD, w, "wq_DHDh", lora_scale, "btd,dhk->bthk")
    k = with_lora_delta(k, h_BTD, w, "wk_DKDh", lora_scale, "btd,dhk->bthk")
    v = with_lora_delta(v, h_BTD, w, "wv_DKDh", lora_scale, "btd,dhk->bthk")
    return q, k, v


def _mlp(w: dict, h_BTD, lora_scale: float):
    if FUSED_GATE_UP in w:
        gate_up_BT2F = jnp.einsum("btd,dgf->btgf", h_BTD, w[FUSED_GATE_UP].astype(h_BTD.dtype))
        gate = with_lora_delta(gate_up_BT2F[:, :, 0], h_BTD, w, "w_gate_DF", lora_scale, "btd,df->btf")
        up = with_lora_delta(gate_up_BT2F[:, :, 1], h_BTD, w, "w_up_DF", lora_scale, "btd,df->btf")
    else:
        gate = project(h_BTD, w, "w_gate_DF", lora_scale, "btd,df->btf")
        up = project(h_BTD, w, "w_up_DF", lora_scale, "btd,df->btf")
    return project(jax.nn.silu(gate) * up, w, "w_down_FD", lora_scale, "btf,fd->btd")


def _attention(q_BTHDh, keys_BKSDh, values_BKSDh, mask_B1TS, scale: float):
    """Dense masked attention over the cache, grouped by kv head (no repeat of keys or values).

    Both products are written as batched matmuls in their canonical form (batch dims (B, K) leading, contraction
    on the last dim of the left operand): XLA:CPU hands those to its fast matmul path, while the einsum
    "bkgts,bksd->btkgd" became a transposed Eigen dot at 1.25 ms a layer on SmolLM2 at batch 32 (0.2 ms this way).
    """
    B, T, H, Dh = q_BTHDh.shape
    K, S = keys_BKSDh.shape[1], keys_BKSDh.shape[2]
    G = H // K
    q_BKQDh = q_BTHDh.reshape(B, T, K, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, Dh)  # Q = G·T queries
    batched = ((0, 1), (0, 1))
    scores_BKQS = jax.lax.dot_general(q_BKQDh, keys_BKSDh, (((3,), (3,)), batched), preferred_element_type=jnp.float32)
    scores_BKGTS = scores_BKQS.reshape(B, K, G, T, S) * scale
    scores_BKGTS = jnp.where(mask_B1TS[:, :, None], scores_BKGTS, jnp.finfo(jnp.float32).min)
    probs_BKQS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(values_BKSDh.dtype).reshape(B, K, G * T, S)
    out_BKQDh = jax.lax.dot_general(probs_BKQS, values_BKSDh, (((3,), (2,)), batched))
    return out_BKQDh.reshape(B, K, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def _layer(cfg: ModelConfig, w: dict, x_BTD, cos, sin, kv, write_index, mask_B1TS, lora_scale: float):
    eps = cfg.rms_norm_eps
    q, k, v = _qkv(cfg, w, rms_norm(x_BTD, w["input_norm_D"], eps), lora_scale)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys, values = (
        jax.lax.dynamic_update_slice(cached, new.transpose(0, 2, 1, 3).astype(cached.dtype), (0, 0, write_index, 0))
        for cached, new in zip(kv, (k, v))
    )
    attn_BTHDh = _attention(q, keys, values, mask_B1TS, cfg.head_dim**-0.5)
    x_BTD = x_BTD + project(attn_BTHDh, w, "wo_HDhD", lora_scale, "bthk,hkd->btd")
    x_BTD = x_BTD + _mlp(w, rms_norm(x_BTD, w["post_attn_norm_D"], eps), lora_scale)
    return x_BTD, (keys, values)


def forward_with_cache(
    cfg: ModelConfig,
    weights: DecodeWeights,
    tokens_BT,
    positions_BT,
    segments_BT,
    segments_BS,
    cache: Cache,
    write_index,
    lora_scale: float,
):
    """Runs T new tokens through all layers, writing their keys/values at `write_index` of every layer's cache.

    Returns (fp32 logits of the last token [B, V], the updated cache). `segments_BS` covers the whole cache (0 =
    padding). The prefill's [B, H, T, S] scores are the only quadratic buffer; a decode step's are [B, H, 1, S].
    """
    dtype = DTYPES[cfg.dtype]
    x_BTD = jnp.take(weights.embed_VD, tokens_BT, axis=0).astype(dtype)
    cos, sin = rope_cos_sin(positions_BT, rope_inv_freq(cfg.rope_parameters, cfg.head_dim), dtype)
    mask_B1TS = attention_mask(segments_BT, segments_BS, write_index)
    updated = []
    for w, kv in zip(weights.layers, cache, strict=True):
        x_BTD, kv = _layer(cfg, w, x_BTD, cos, sin, kv, write_index, mask_B1TS, lora_scale)
        updated.append(kv)
    h_BD = rms_norm(x_BTD[:, -1], weights.final_norm_D, cfg.rms_norm_eps)
    logits_BV = jnp.einsum("bd,dv->bv", h_BD, weights.lm_head().astype(dtype)).astype(jnp.float32)
    return logits_BV, tuple(updated)
