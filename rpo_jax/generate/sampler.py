"""Batched autoregressive sampling with a KV cache: one jit-compiled prefill + `while_loop` decode.

Prompts are LEFT-padded to a common length P so every row writes its next key/value at the same cache
index; positions count only real tokens (the first real token of each row has position 0) and padded keys
carry segment id 0, so padding never changes a row's result. The cache holds keys and values as
[Y, B, S_max, K, Dh] with S_max = P + max_new_tokens, batch split over ("data", "fsdp") like training.

Stopping: EOS ids (one or several) stop a row on device; the loop ends when every row has stopped or
`max_new_tokens` is reached. Stop strings are applied on the host after decoding (`truncate_at_stop`): the
device keeps generating until EOS / the token limit, and the text is cut at the first stop string.

Sampling order per step (as HF): temperature, then top-k, then top-p (nucleus); temperature 0 is greedy.
Tokens tied with the top-k / top-p threshold logit are all kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.model.attention import attention_mask, xla_attention
from rpo_jax.model.llama import DTYPES, Llama, decoder_layer, rms_norm, rope_cos_sin, rope_inv_freq
from rpo_jax.runtime.sharding import BATCH_AXES, data_parallel_size


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop (all fields are compile-time constants)."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    prompt_length_multiple: int = 64  # P is rounded up to this, so prompts of similar length share a compile

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.eos_ids:
            raise ValueError("eos_ids must name at least one token id")
        if self.prompt_length_multiple < 1:
            raise ValueError(f"prompt_length_multiple must be >= 1, got {self.prompt_length_multiple}")


@dataclasses.dataclass(frozen=True)
class Completion:
    tokens: list[int]  # generated ids, without the EOS that ended them
    stopped: bool  # True if an EOS id ended the row, False if max_new_tokens did


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, length], segment ids [B, length]: 1 on real tokens, 0 on left padding)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if not 0 < len(prompt) <= length:
            raise ValueError(f"prompt {row}: length {len(prompt)} not in [1, {length}]")
        tokens[row, length - len(prompt) :] = prompt
        segments[row, length - len(prompt) :] = 1
    return tokens, segments


def filter_logits(logits_BV: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Scaled fp32 logits with tokens outside top-k / the top-p nucleus set to -inf."""
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # A token is in the nucleus if the mass strictly before it is below top_p (so the top one always is).
        keep_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p
        threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
    return logits_BV


def next_token(logits_BV: jax.Array, key: jax.Array, params: SamplingParams) -> jax.Array:
    if params.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits_BV, params.temperature, params.top_k, params.top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


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


def _generate(graphdef, state, tokens_BP, segments_BP, key, *, params: SamplingParams, mesh: Mesh, use_lora: bool):
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    lora_scale = model.lora_scale if use_lora else 0.0
    B, P = tokens_BP.shape
    N = params.max_new_tokens
    S = P + N
    batch_spec = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    kv_axis = "tensor" if cfg.num_key_value_heads % mesh.shape["tensor"] == 0 else None
    cache_spec = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, None, kv_axis, None))
    cache_shape = (cfg.num_hidden_layers, B, S, cfg.num_key_value_heads, cfg.head_dim)
    keys = jax.lax.with_sharding_constraint(jnp.zeros(cache_shape, DTYPES[cfg.dtype]), cache_spec)
    values = jax.lax.with_sharding_constraint(jnp.zeros(cache_shape, DTYPES[cfg.dtype]), cache_spec)
    # Generated positions are all real; causality hides the ones not yet written.
    segments_BS = jnp.concatenate([segments_BP, jnp.ones((B, N), jnp.int32)], axis=1)
    prompt_len_B = jnp.sum(segments_BP, axis=1)
    positions_BP = jnp.maximum(jnp.cumsum(segments_BP, axis=1) - 1, 0)
    eos = jnp.asarray(params.eos_ids, jnp.int32)

    logits_BV, keys, values = forward_with_cache(
        model, tokens_BP, positions_BP, segments_BP, segments_BS, keys, values, 0, lora_scale
    )
    first = next_token(logits_BV, jax.random.fold_in(key, 0), params)
    out_BN = jnp.full((B, N), params.pad_id, jnp.int32).at[:, 0].set(first)
    out_BN = jax.lax.with_sharding_constraint(out_BN, batch_spec)
    done_B = jnp.isin(first, eos)

    def cond(carry):
        step, _, done_B, _, _, _ = carry
        return (step < N) & ~jnp.all(done_B)

    def body(carry):
        step, last_B, done_B, out_BN, keys, values = carry
        # Token `step - 1` is fed at cache index P + step - 1 and position prompt_len + step - 1.
        positions_B1 = (prompt_len_B + step - 1)[:, None]
        logits_BV, keys, values = forward_with_cache(
            model,
            last_B[:, None],
            positions_B1,
            jnp.ones((B, 1), jnp.int32),
            segments_BS,
            keys,
            values,
            P + step - 1,
            lora_scale,
        )
        token_B = next_token(logits_BV, jax.random.fold_in(key, step), params)
        token_B = jnp.where(done_B, params.pad_id, token_B)
        out_BN = jax.lax.dynamic_update_slice(out_BN, token_B[:, None], (0, step))
        return step + 1, token_B, done_B | jnp.isin(token_B, eos), out_BN, keys, values

    carry = (jnp.int32(1), first, done_B, out_BN, keys, values)
    _, _, done_B, out_BN, _, _ = jax.lax.while_loop(cond, body, carry)
    return out_BN, done_B


class Sampler:
    """Generates from a `Llama` on `mesh`; compiled programs are kept per (batch, prompt length, params)."""

    def __init__(self, model: Llama, mesh: Mesh, *, use_lora: bool = True):
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        self.use_lora = use_lora
        self._compiled: dict[SamplingParams, object] = {}
        self.batch_multiple = data_parallel_size(mesh)

    def _program(self, params: SamplingParams):
        if params not in self._compiled:
            self._compiled[params] = jax.jit(
                lambda g, s, t, seg, k: _generate(
                    g, s, t, seg, k, params=params, mesh=self.mesh, use_lora=self.use_lora
                ),
                static_argnums=0,
            )
        return self._compiled[params]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, key: jax.Array) -> list[Completion]:
        """One completion per prompt (token ids). Rows are padded to a multiple of data*fsdp; extras dropped."""
        if not prompts:
            return []
        rows = list(prompts)
        rows += [rows[0]] * (-len(rows) % self.batch_multiple)
        m = params.prompt_length_multiple
        length = -(-max(len(p) for p in rows) // m) * m
        tokens_BP, segments_BP = left_pad(rows, params.pad_id, length)
        sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, None))
        tokens_BP, segments_BP = (jax.device_put(a, sharding) for a in (tokens_BP, segments_BP))
        out_BN, done_B = self._program(params)(self.graphdef, self.state, tokens_BP, segments_BP, key)
        out_BN, done_B = np.asarray(jax.device_get(out_BN)), np.asarray(jax.device_get(done_B))
        completions = []
        for row in range(len(prompts)):
            tokens = out_BN[row].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in params.eos_ids), len(tokens))
            completions.append(Completion(tokens=tokens[:cut], stopped=bool(done_B[row])))
        return completions


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """Cuts `text` before the earliest stop string; returns (text, whether one was found)."""
    cuts = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
