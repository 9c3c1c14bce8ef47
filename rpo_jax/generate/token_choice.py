"""How the sampler picks each next token from a batch's logits, with one temperature and top-p per row.

Order (as HF): temperature, then top-k, then top-p (nucleus); temperature 0 is greedy. Temperature and top-p are
traced arrays, so new values compile nothing; top-k is a static size (`lax.top_k`). The sampling branch, and
within it the nucleus sort, runs only when some row needs it (`lax.cond`): a greedy batch pays for an argmax
alone. Tokens tied with the top-k / top-p threshold logit are all kept.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RowControls(NamedTuple):
    """Per row, traced: temperature (0 = greedy), top-p (1 = off), the most tokens the row generates (<= N)."""

    temperature_B: jax.Array
    top_p_B: jax.Array
    limit_B: jax.Array


def _per_row(value) -> jax.Array:
    """A scalar or a [B] array as [B or 1, 1] fp32, to broadcast over the vocabulary."""
    return jnp.reshape(jnp.asarray(value, jnp.float32), (-1, 1))


def _scaled_top_k(logits_BV: jax.Array, temperature, top_k: int) -> jax.Array:
    t_B1 = _per_row(temperature)
    logits_BV = logits_BV.astype(jnp.float32) / jnp.where(t_B1 > 0, t_B1, 1.0)  # greedy rows: unscaled
    if top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return logits_BV


def _nucleus(logits_BV: jax.Array, top_p) -> jax.Array:
    top_p_B1 = _per_row(top_p)
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # A token is in the nucleus if the mass strictly before it is below top_p (so the top one always is); a row
    # with top_p 1 keeps every token, even where rounding puts the mass before the last ones at 1.
    keep_BV = ((jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p_B1) | (top_p_B1 >= 1.0)
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)


def filter_logits(logits_BV: jax.Array, temperature, top_k: int, top_p) -> jax.Array:
    """Scaled fp32 logits with tokens outside top-k / the top-p nucleus set to -inf. `temperature` and `top_p` are
    scalars or one per row; a row of temperature 0 is left unscaled."""
    return _nucleus(_scaled_top_k(logits_BV, temperature, top_k), top_p)


def next_token(logits_BV: jax.Array, key: jax.Array, controls: RowControls, top_k: int) -> jax.Array:
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

    def sample(logits_BV):
        scaled_BV = _scaled_top_k(logits_BV, controls.temperature_B, top_k)
        needs_nucleus = jnp.any(controls.top_p_B < 1.0)
        scaled_BV = jax.lax.cond(needs_nucleus, _nucleus, lambda x, _: x, scaled_BV, controls.top_p_B)
        drawn_B = jax.random.categorical(key, scaled_BV, axis=-1).astype(jnp.int32)
        return jnp.where(controls.temperature_B > 0, drawn_B, greedy_B)

    return jax.lax.cond(jnp.any(controls.temperature_B > 0), sample, lambda _: greedy_B, logits_BV)
