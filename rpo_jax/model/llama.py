"""Llama in Flax NNX, numerically matching HF `LlamaForCausalLM`.

Dimension alphabet used in names: B batch, G sequences per preference group, L length (T queries, S keys),
D hidden, H q-heads, K kv-heads, Dh head dim, F MLP width, V vocab, R LoRA rank, Y layers.

Layer weights are stored stacked along a leading `layers` axis whatever `scan_layers` says, so checkpoints do
not depend on how the forward is executed: scan runs `jax.lax.scan` over that axis, no-scan slices it in a
Python loop. Each parameter carries `logical_axes` metadata, mapped to mesh axes by `runtime/sharding.py`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh

from rpo_jax.config.schema import LoraConfig, ModelConfig, RopeConfig
from rpo_jax.model.attention import AttentionMask, attend, platform_of, resolve_attention, shared_prompt_attention
from rpo_jax.model.quantization import QuantizedWeight, frozen_matmul
from rpo_jax.model.remat import remat_policy
from rpo_jax.runtime.sharding import lookup_rows

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# (weight name, logical axes without the layers axis, axes that form the input side for LoRA's A factor).
LAYER_WEIGHTS: dict[str, tuple[tuple[str, ...], int]] = {
    "wq_DHDh": (("embed", "heads", "head_dim"), 1),
    "wk_DKDh": (("embed", "kv_heads", "head_dim"), 1),
    "wv_DKDh": (("embed", "kv_heads", "head_dim"), 1),
    "wo_HDhD": (("heads", "head_dim", "embed"), 2),
    "w_gate_DF": (("embed", "mlp"), 1),
    "w_up_DF": (("embed", "mlp"), 1),
    "w_down_FD": (("mlp", "embed"), 1),
}
LORA_DROPOUT_KEY, LORA_DROPOUT_RATE = "_lora_dropout_key", "_lora_dropout_rate"
LORA_TARGETS = {
    "q": "wq_DHDh",
    "k": "wk_DKDh",
    "v": "wv_DKDh",
    "o": "wo_HDhD",
    "gate": "w_gate_DF",
    "up": "w_up_DF",
    "down": "w_down_FD",
}


def layer_weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    D, H, K, Dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    F = cfg.intermediate_size
    return {
        "wq_DHDh": (D, H, Dh),
        "wk_DKDh": (D, K, Dh),
        "wv_DKDh": (D, K, Dh),
        "wo_HDhD": (H, Dh, D),
        "w_gate_DF": (D, F),
        "w_up_DF": (D, F),
        "w_down_FD": (F, D),
    }


def _normal(rngs: nnx.Rngs, shape, std, dtype):
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class DecoderLayers(nnx.Module):
    """All decoder layers' weights, stacked along a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, lora: LoraConfig, *, rngs: nnx.Rngs):
        Y, D = cfg.num_hidden_layers, cfg.hidden_size
        dtype = DTYPES[cfg.param_dtype]
        self.input_norm_D = nnx.Param(jnp.ones((Y, D), dtype), logical_axes=("layers", "norm"))
        self.post_attn_norm_D = nnx.Param(jnp.ones((Y, D), dtype), logical_axes=("layers", "norm"))
        shapes, quantized = layer_weight_shapes(cfg), lora.base_quantization != "none"
        for name, (axes, n_in) in LAYER_WEIGHTS.items():
            w, layout = _normal(rngs, (Y, *shapes[name]), cfg.initializer_range, dtype), ("layers", *axes)
            # QLoRA: the frozen base's linear maps stored quantized (rpo_jax/model/quantization.py).
            weight = QuantizedWeight(name, w, layout, n_in, lora) if quantized else nnx.Param(w, logical_axes=layout)
            setattr(self, name, weight)
        # LoRA factors: A [Y, in, R] random, B [Y, R, out] zero, so an adapted model starts equal to its base.
        self.lora_names = tuple(LORA_TARGETS[t] for t in lora.target_modules) if lora.rank > 0 else ()
        for name in self.lora_names:
            axes, n_in = LAYER_WEIGHTS[name]
            shape = shapes[name]
            fan_in = math.prod(shape[:n_in])
            a = _normal(rngs, (Y, *shape[:n_in], lora.rank), 1.0 / math.sqrt(fan_in), jnp.float32)
            b = jnp.zeros((Y, lora.rank, *shape[n_in:]), jnp.float32)
            setattr(self, f"lora_a_{name}", nnx.LoRAParam(a, logical_axes=("layers", *axes[:n_in], "lora_rank")))
            setattr(self, f"lora_b_{name}", nnx.LoRAParam(b, logical_axes=("layers", "lora_rank", *axes[n_in:])))

    def stacked(self) -> dict[str, jax.Array]:
        """Raw arrays (`QuantizedArray`s for a quantized base) keyed by weight name, each with leading layers axis Y."""
        parts = {k: v for k, v in vars(self).items() if isinstance(v, nnx.Variable | QuantizedWeight)}
        return {k: v.stored() if isinstance(v, QuantizedWeight) else v[...] for k, v in parts.items()}


def rms_norm(x_BLD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
    # As HF: normalise in fp32, cast back, then scale; the order matters for bf16 parity.
    x32 = x_BLD.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    weight = weight_D.astype(x_BLD.dtype).reshape((1,) * (x_BLD.ndim - 1) + weight_D.shape)
    return weight * normed.astype(x_BLD.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> jax.Array:
    """Inverse frequencies [Dh/2], with Llama-3.1 scaling as in HF `_compute_llama3_parameters`."""
    inv_freq = 1.0 / (rope.rope_theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if rope.rope_type == "default":
        return inv_freq
    low_freq_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_freq_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def rope_cos_sin(positions_BL: jax.Array, inv_freq: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    freqs_BLf = positions_BL[..., None].astype(jnp.float32) * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs_BLf, freqs_BLf], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x_BLND: jax.Array, cos_BLD: jax.Array, sin_BLD: jax.Array) -> jax.Array:
    # HF rotate-half layout: the first and second halves of head_dim form the rotated pairs.
    half = x_BLND.shape[-1] // 2
    rotated = jnp.concatenate([-x_BLND[..., half:], x_BLND[..., :half]], axis=-1)
    return x_BLND * cos_BLD[:, :, None, :] + rotated * sin_BLD[:, :, None, :]


def project(x, p: Mapping[str, jax.Array], name: str, lora_scale: float, contract: str):
    """x @ W (einsum `contract`) plus the LoRA delta scale·(x @ A) @ B when adapters exist and are enabled."""
    return with_lora_delta(frozen_matmul(contract, x, p[name]), x, p, name, lora_scale, contract)


def with_lora_delta(y, x, p: Mapping[str, jax.Array], name: str, lora_scale: float, contract: str):
    """`y` (x @ W for weight `name`, einsum `contract`) plus scale·(x @ A) @ B when adapters on it are enabled."""
    if not (lora_scale and f"lora_a_{name}" in p):
        return y
    ins, out_spec = contract.split("->")
    x_spec, w_spec = ins.split(",")
    w_in = w_spec[: LAYER_WEIGHTS[name][1]]
    lead = "".join(c for c in x_spec if c not in w_in)
    if LORA_DROPOUT_KEY in p:
        # PEFT applies dropout to the adapter's input only; the frozen path sees the clean input.
        key, rate = jax.random.fold_in(p[LORA_DROPOUT_KEY], list(LAYER_WEIGHTS).index(name)), p[LORA_DROPOUT_RATE]
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        x = jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
    xa = jnp.einsum(f"{x_spec},{w_in}r->{lead}r", x, p[f"lora_a_{name}"].astype(x.dtype))
    delta = jnp.einsum(f"{lead}r,r{w_spec[len(w_in) :]}->{out_spec}", xa, p[f"lora_b_{name}"].astype(x.dtype))
    return y + lora_scale * delta


def decoder_layer(
    cfg: ModelConfig,
    p: Mapping[str, jax.Array],
    x_BLD,
    cos,
    sin,
    attend_fn: Callable,
    lora_scale: float,
):
    """One pre-norm Llama block (x_BLD in and out). `attend_fn(q, keys, values)` is the attention
    (`rpo_jax.model.attention`), its mask bound in. Projection outputs carry MaxText's checkpoint names, which the
    named remat policies save (`rpo_jax.model.remat`). The sampler's cached step is `generate.cached_forward`.
    """
    eps = cfg.rms_norm_eps
    h = rms_norm(x_BLD, p["input_norm_D"], eps)
    q_BLHDh = checkpoint_name(project(h, p, "wq_DHDh", lora_scale, "bld,dhk->blhk"), "query_proj")
    k_BLKDh = checkpoint_name(project(h, p, "wk_DKDh", lora_scale, "bld,dhk->blhk"), "key_proj")
    v_BLKDh = checkpoint_name(project(h, p, "wv_DKDh", lora_scale, "bld,dhk->blhk"), "value_proj")
    q_BLHDh = apply_rope(q_BLHDh, cos, sin)
    k_BLKDh = apply_rope(k_BLKDh, cos, sin)
    attn_BLHDh = attend_fn(q_BLHDh, k_BLKDh, v_BLKDh)
    x_BLD = x_BLD + checkpoint_name(project(attn_BLHDh, p, "wo_HDhD", lora_scale, "blhk,hkd->bld"), "out_proj")
    h = rms_norm(x_BLD, p["post_attn_norm_D"], eps)
    return x_BLD + mlp(cfg, p, h, lora_scale)


def _mlp_block(p, h_BLD, lora_scale: float):
    gate_BLF = checkpoint_name(project(h_BLD, p, "w_gate_DF", lora_scale, "bld,df->blf"), "mlpwi_0")
    up_BLF = checkpoint_name(project(h_BLD, p, "w_up_DF", lora_scale, "bld,df->blf"), "mlpwi_1")
    mlp_BLF = jax.nn.silu(gate_BLF) * up_BLF
    return checkpoint_name(project(mlp_BLF, p, "w_down_FD", lora_scale, "blf,fd->bld"), "mlpwo")


def mlp(cfg: ModelConfig, p: Mapping[str, jax.Array], h_BLD, lora_scale: float):
    """SwiGLU MLP. With `model.mlp_chunk_size` C < L it runs on C positions at a time, each chunk under
    `jax.checkpoint`: only one chunk's [B, C, F] intermediates exist at once, in the forward and in the backward
    (which recomputes each chunk from its input; remat saves nothing inside a chunk)."""
    B, L, D = h_BLD.shape
    C = cfg.mlp_chunk_size
    if not C or C >= L:
        return _mlp_block(p, h_BLD, lora_scale)
    n = -(-L // C)
    h_nBCD = jnp.moveaxis(jnp.pad(h_BLD, ((0, 0), (0, n * C - L), (0, 0))).reshape(B, n, C, D), 1, 0)

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def chunk(i, h_BCD):
        q = dict(p)
        if LORA_DROPOUT_KEY in q:  # an independent dropout mask per chunk
            q[LORA_DROPOUT_KEY] = jax.random.fold_in(q[LORA_DROPOUT_KEY], i)
        return _mlp_block(q, h_BCD, lora_scale)

    out_nBCD = jax.lax.map(lambda args: chunk(*args), (jnp.arange(n), h_nBCD))
    return jnp.moveaxis(out_nBCD, 0, 1).reshape(B, n * C, D)[:, :L]


class Llama(nnx.Module):
    """Llama decoder. `__call__` returns logits [B, L, V] or, with `return_hidden`, final hidden states."""

    def __init__(self, cfg: ModelConfig, lora: LoraConfig | None = None, *, rngs: nnx.Rngs):
        lora = lora or LoraConfig()
        self.cfg = cfg
        self.lora_scale = lora.alpha / lora.rank if lora.rank > 0 else 0.0
        self.lora_dropout = lora.dropout
        dtype = DTYPES[cfg.param_dtype]
        V, D = cfg.vocab_size, cfg.hidden_size
        self.embed_VD = nnx.Param(_normal(rngs, (V, D), cfg.initializer_range, dtype), logical_axes=("vocab", "embed"))
        self.layers = DecoderLayers(cfg, lora, rngs=rngs)
        self.final_norm_D = nnx.Param(jnp.ones((D,), dtype), logical_axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head_DV = nnx.Param(
                _normal(rngs, (D, V), cfg.initializer_range, dtype), logical_axes=("embed", "vocab")
            )

    def lm_head_weight(self) -> jax.Array:
        """[D, V] output projection (the transposed embedding when tied)."""
        if self.cfg.tie_word_embeddings:
            return self.embed_VD[...].T
        return self.lm_head_DV[...]

    def __call__(
        self,
        tokens_BL,
        positions_BL,
        segment_ids_BL=None,
        *,
        return_hidden: bool = False,
        use_lora: bool = True,
        lora_dropout_rng: jax.Array | None = None,
        mesh: Mesh | None = None,
        prefix_ids_BL=None,
        max_segments: int = 1,
    ):
        """`lora_dropout_rng` turns on LoRA dropout (training only); without it adapters run deterministically.
        `mesh` picks the attention for `auto`; packed rows pass `max_segments` and, with shared prompts,
        `prefix_ids_BL` (`AttentionMask`), for which `auto` runs blockwise where cudnn/splash cannot."""
        cfg = self.cfg
        dtype = DTYPES[cfg.dtype]
        if segment_ids_BL is None:
            segment_ids_BL = jnp.ones_like(tokens_BL)
        x_BLD = lookup_rows(self.embed_VD[...], tokens_BL, mesh).astype(dtype)
        cos, sin = rope_cos_sin(positions_BL, rope_inv_freq(cfg.rope_parameters, cfg.head_dim), dtype)
        impl, _ = resolve_attention(cfg, platform_of(mesh))
        if prefix_ids_BL is not None and cfg.attention == "auto" and shared_prompt_attention(impl):
            impl = "blockwise"
        mask = AttentionMask(segment_ids_BL, max_segments, prefix_ids_BL)
        lora_scale = self.lora_scale if use_lora else 0.0

        def attend_fn(q, k, v):
            return attend(impl, q, k, v, mask, scale=cfg.head_dim**-0.5, mesh=mesh)

        def block(x, p):
            return decoder_layer(cfg, p, x, cos, sin, attend_fn, lora_scale), None

        policy = remat_policy(cfg.remat_policy)
        if cfg.remat_policy != "none":
            block = jax.checkpoint(block, policy=policy, prevent_cse=not cfg.scan_layers)
        stacked = self.layers.stacked()
        if lora_scale and self.lora_dropout > 0 and lora_dropout_rng is not None:
            stacked[LORA_DROPOUT_KEY] = jax.random.split(lora_dropout_rng, cfg.num_hidden_layers)
            stacked[LORA_DROPOUT_RATE] = jnp.full((cfg.num_hidden_layers,), self.lora_dropout, jnp.float32)
        if cfg.scan_layers:
            x_BLD, _ = jax.lax.scan(block, x_BLD, stacked)
        else:
            for i in range(cfg.num_hidden_layers):
                x_BLD, _ = block(x_BLD, {k: v[i] for k, v in stacked.items()})
        h_BLD = rms_norm(x_BLD, self.final_norm_D[...], cfg.rms_norm_eps)
        if return_hidden:
            return h_BLD
        return jnp.einsum("bld,dv->blv", h_BLD, self.lm_head_weight().astype(dtype))


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from abstract shapes only (no memory allocated)."""
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    return sum(math.prod(x.shape) for x in leaves)
