"""One forward pass of new tokens through a `Llama` that reads and writes a KV cache (the sampler's prefill and
decode steps): keys and values live in [Y, B, S_max, K, Dh] buffers carried by the caller."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rpo_jax.model.attention import attention_mask, xla_attention
from rpo_jax.model.llama import DTYPES, Llama, decoder_layer, rms_norm, rope_cos_sin, rope_inv_freq


def forward_with_cache(
    model: Llama, tokens_BT, positions_BT, segments_BT, segments_BS, keys, values, write_index, lora_scale: float
):
    """Runs T new tokens through all layers, writing their k/v at `write_index` of the [Y, B, S, K, Dh] cache.

    Returns (fp32 logits of the last token [B, V], keys, values). `segments_BS` covers the whole cache.
    Attention is always `xla` with the dense cache mask, whatever `model.attention` says: a decode step has one
    query per row (its scores are [B, H, 1, S]), and the prefill's left-padded prompts are not the right-padded
    rows the cuDNN path takes. The prefill's [B, H, P, S] scores are the only quadratic buffer.
    """
    cfg = model.cfg
    dtype = DTYPES[cfg.dtype]
    x_BTD = jnp.take(model.embed_VD[...], tokens_BT, axis=0).astype(dtype)
    cos, sin = rope_cos_sin(positions_BT, rope_inv_freq(cfg.rope_parameters, cfg.head_dim), dtype)
    mask_B1TS = attention_mask(segments_BT, segments_BS, write_index)

    def layer(carry, p):
        x_BTD, keys, values, i = carry
        written = {}

        def kv_update(new_kv):
            # Write this step's k/v into layer i of the full cache (a carry, so XLA updates it in place).
            k_BTKDh, v_BTKDh = new_kv
            start = (i, 0, write_index, 0, 0)
            written["keys"] = jax.lax.dynamic_update_slice(keys, k_BTKDh[None].astype(keys.dtype), start)
            written["values"] = jax.lax.dynamic_update_slice(values, v_BTKDh[None].astype(values.dtype), start)
            return written["keys"][i], written["values"][i]

        def attend_fn(q, k, v):
            return xla_attention(q, k, v, mask_B1TS, scale=cfg.head_dim**-0.5)

        x_BTD, _ = decoder_layer(cfg, p, x_BTD, cos, sin, attend_fn, lora_scale, kv_update=kv_update)
        return (x_BTD, written["keys"], written["values"], i + 1), None

    init = (x_BTD, keys, values, jnp.int32(0))
    (x_BTD, keys, values, _), _ = jax.lax.scan(layer, init, model.layers.stacked())
    h_BD = rms_norm(x_BTD[:, -1], model.final_norm_D[...], cfg.rms_norm_eps)
    logits_BV = jnp.einsum("bd,dv->bv", h_BD, model.lm_head_weight().astype(dtype)).astype(jnp.float32)
    return logits_BV, keys, values
