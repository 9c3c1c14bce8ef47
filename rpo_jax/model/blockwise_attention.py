"""Causal, segment-masked attention in pure JAX, computed block by block (FlashAttention-2 style, any backend).

Queries are taken `block_q` at a time and keys/values `block_kv` at a time; each query block keeps a running row
maximum m, row sum and unnormalised output (the online softmax), so no `[T, S]` score matrix exists: the live
temporaries are one block of scores `[B, K, G, block_q, block_kv]` and O(L) row statistics. The backward is a
custom VJP that recomputes each block's probabilities from the saved log-sum-exp (FA-2 algorithm 2), so the
backward is O(L · block) too; what the forward leaves for it is q, k, v, the output and the log-sum-exp.

Blocks that are fully masked are never computed: kv blocks above the causal diagonal are outside the loop bounds,
and a block pair whose segment-id ranges do not overlap in any row (padding against text, one packed sequence
against another) is skipped by a `lax.cond`. GQA runs on grouped queries `[B, T, K, G, Dh]` against the K
key/value heads, so K/V are never repeated. Scores, softmax statistics and accumulators are float32; the two
block matmuls read q/k/v (and the probabilities, cast like `jax.nn.dot_product_attention` does) in their dtype.

Mask semantics equal `attention.attention_mask`: query t sees key s iff s <= t and both carry the same segment
id, or s's segment is t's prefix segment (shared prompts); padding (id 0) sees earlier padding, so no row is
empty. Rows are padded internally to whole blocks with id -1, which only padding rows added here carry.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Scores of masked pairs; finite so that a block whose row is still all-masked gives exp(0) = 1, not NaN, before
# the explicit zeroing below.
MASKED = -1e30
DEFAULT_BLOCK = 512


def _to_blocks(x, n: int, size: int, fill=0):
    """[B, L, ...] -> [n, B, size, ...], padding L to n·size with `fill`."""
    pad = n * size - x.shape[1]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return jnp.moveaxis(x.reshape(x.shape[0], n, size, *x.shape[2:]), 1, 0)


def _from_blocks(x_n):
    """[n, B, size, ...] -> [B, n·size, ...]."""
    x = jnp.moveaxis(x_n, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _live_pairs(seg_q_nBb2, seg_k_nBb2):
    """[nq, nk] bool: some row of the batch has a (query, key) pair the mask allows in this block pair: equal
    segment ids, or the key's segment is the query's prefix. Conservative (range overlap of min..max per row), so a
    skipped block is certainly fully masked. Ids without the trailing (segment, prefix) axis are segment ids."""
    if seg_q_nBb2.ndim == 3:
        seg_q_nBb2, seg_k_nBb2 = seg_q_nBb2[..., None], seg_k_nBb2[..., None]
    k_lo, k_hi = seg_k_nBb2[..., 0].min(-1), seg_k_nBb2[..., 0].max(-1)  # [nk, B]
    live = False
    for field in range(seg_q_nBb2.shape[-1]):  # the query's own segment id, then its prefix id
        q_lo, q_hi = seg_q_nBb2[..., field].min(-1), seg_q_nBb2[..., field].max(-1)  # [nq, B]
        live = live | ((q_lo[:, None] <= k_hi[None]) & (k_lo[None] <= q_hi[:, None]))  # [nq, nk, B]
    return live.any(-1)


def _block_mask(i, j, block_q: int, block_kv: int, seg_q_Bq, seg_k_Bk):
    """[B, 1, 1, bq, bk]: causal by absolute index, and the key in the query's segment or in its prefix segment
    (`seg_*` [B, b, 2] = segment id, prefix id)."""
    q_idx = i * block_q + jnp.arange(block_q)
    k_idx = j * block_kv + jnp.arange(block_kv)
    causal = q_idx[:, None] >= k_idx[None, :]
    k_seg = seg_k_Bk[:, None, :, 0]
    same = (seg_q_Bq[:, :, None, 0] == k_seg) | (seg_q_Bq[:, :, None, 1] == k_seg)
    return (causal[None] & same)[:, None, None]


def _scores(q_BqKGD, k_BkKD, scale: float):
    s = jnp.einsum("bqkgd,bskd->bkgqs", q_BqKGD, k_BkKD, preferred_element_type=jnp.float32)
    return s * jnp.float32(scale)


def _last_kv_block(i, block_q: int, block_kv: int, nk: int):
    """Exclusive upper bound of kv blocks that query block i can see causally."""
    return jnp.minimum((i * block_q + block_q - 1) // block_kv + 1, nk)


def _layout(q, k, v, seg, block_q, block_kv):
    T = q.shape[1]
    nq, nk = -(-T // block_q), -(-T // block_kv)
    return (
        nq,
        nk,
        _to_blocks(q, nq, block_q),
        _to_blocks(k, nk, block_kv),
        _to_blocks(v, nk, block_kv),
        _to_blocks(seg, nq, block_q, fill=-1),
        _to_blocks(seg, nk, block_kv, fill=-1),
    )


def _forward(q, k, v, seg, scale, block_q, block_kv):
    """(out [B, T, K, G, Dh] in q's dtype, lse [nq, B, K, G, bq] float32)."""
    B, T, K, G, Dh = q.shape
    nq, nk, q_n, k_n, v_n, sq_n, sk_n = _layout(q, k, v, seg, block_q, block_kv)
    live = _live_pairs(sq_n, sk_n)

    def query_block(i):
        q_i, sq_i = q_n[i], sq_n[i]

        def kv_step(j, carry):
            def update(carry):
                m, row_sum, acc = carry
                mask = _block_mask(i, j, block_q, block_kv, sq_i, sk_n[j])
                s = jnp.where(mask, _scores(q_i, k_n[j], scale), MASKED)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
                correction = jnp.exp(m - m_new)
                row_sum = row_sum * correction + p.sum(-1)
                pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v_n[j], preferred_element_type=jnp.float32)
                return m_new, row_sum, acc * correction[..., None] + pv

            return jax.lax.cond(live[i, j], update, lambda c: c, carry)

        init = (
            jnp.full((B, K, G, block_q), MASKED, jnp.float32),
            jnp.zeros((B, K, G, block_q), jnp.float32),
            jnp.zeros((B, K, G, block_q, Dh), jnp.float32),
        )
        m, row_sum, acc = jax.lax.fori_loop(0, _last_kv_block(i, block_q, block_kv, nk), kv_step, init)
        out = (acc / row_sum[..., None]).astype(q.dtype)  # every query sees itself: row_sum > 0
        return jnp.einsum("bkgqd->bqkgd", out), m + jnp.log(row_sum)

    out_n, lse_n = jax.lax.map(query_block, jnp.arange(nq))
    return _from_blocks(out_n)[:, :T], lse_n


def _backward(scale, block_q, block_kv, residuals, d_out):
    q, k, v, seg, out, lse_n = residuals
    B, T, K, G, Dh = q.shape
    nq, nk, q_n, k_n, v_n, sq_n, sk_n = _layout(q, k, v, seg, block_q, block_kv)
    live = _live_pairs(sq_n, sk_n)
    do_n = _to_blocks(d_out, nq, block_q)
    # D_t = sum_d dO·O: the softmax-Jacobian term of every row (FA-2), [nq, B, K, G, bq].
    delta = jnp.einsum("bqkgd,bqkgd->bkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    delta_n = jnp.moveaxis(_to_blocks(jnp.moveaxis(delta, 3, 1), nq, block_q), 2, -1)

    def kv_block(dq_n, j):
        k_j, v_j, sk_j = k_n[j], v_n[j], sk_n[j]

        def q_step(i, carry):
            def update(carry):
                dq_n, dk, dv = carry
                q_i, do_i = q_n[i], do_n[i]
                mask = _block_mask(i, j, block_q, block_kv, sq_n[i], sk_j)
                s = _scores(q_i, k_j, scale)
                p = jnp.where(mask, jnp.exp(s - lse_n[i][..., None]), 0.0)
                dv = dv + jnp.einsum(
                    "bkgqs,bqkgd->bskd", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32
                )
                dp = jnp.einsum("bqkgd,bskd->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_n[i][..., None]) * jnp.float32(scale)
                dq_i = jnp.einsum("bkgqs,bskd->bqkgd", ds.astype(k_j.dtype), k_j, preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds.astype(q_i.dtype), q_i, preferred_element_type=jnp.float32)
                return dq_n.at[i].add(dq_i), dk, dv

            return jax.lax.cond(live[i, j], update, lambda c: c, carry)

        zeros_kv = jnp.zeros((B, block_kv, K, Dh), jnp.float32)
        first_q = (j * block_kv) // block_q  # earlier query blocks lie entirely before this kv block
        dq_n, dk, dv = jax.lax.fori_loop(first_q, nq, q_step, (dq_n, zeros_kv, zeros_kv))
        return dq_n, (dk, dv)

    dq_n = jnp.zeros((nq, B, block_q, K, G, Dh), jnp.float32)
    dq_n, (dk_n, dv_n) = jax.lax.scan(kv_block, dq_n, jnp.arange(nk))
    dq = _from_blocks(dq_n)[:, :T].astype(q.dtype)
    dk = _from_blocks(dk_n)[:, :T].astype(k.dtype)
    dv = _from_blocks(dv_n)[:, :T].astype(v.dtype)
    return dq, dk, dv, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, seg, scale, block_q, block_kv):
    return _forward(q, k, v, seg, scale, block_q, block_kv)[0]


def _attention_fwd(q, k, v, seg, scale, block_q, block_kv):
    out, lse_n = _forward(q, k, v, seg, scale, block_q, block_kv)
    return out, (q, k, v, seg, out, lse_n)


_attention.defvjp(_attention_fwd, _backward)


def blockwise_attention(
    q_BTHDh,
    k_BTKDh,
    v_BTKDh,
    segment_ids_BT,
    *,
    scale: float,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
    prefix_ids_BT=None,
):
    """Causal self-attention [B, T, H, Dh] over keys/values [B, T, K, Dh] (H a multiple of K), same-segment only,
    or also the segment `prefix_ids_BT` names (shared prompts, `attention.AttentionMask`). Block sizes are capped
    at T, so short rows run as one block."""
    B, T, H, Dh = q_BTHDh.shape
    K = k_BTKDh.shape[2]
    if k_BTKDh.shape[1] != T:
        raise ValueError(f"blockwise attention is self-attention: {T} queries but {k_BTKDh.shape[1]} keys")
    q_BTKGD = q_BTHDh.reshape(B, T, K, H // K, Dh)  # head h = k·G + g, as jax.nn.dot_product_attention groups
    prefix_ids_BT = segment_ids_BT if prefix_ids_BT is None else prefix_ids_BT
    seg_BT2 = jnp.stack([segment_ids_BT, prefix_ids_BT], axis=-1).astype(jnp.int32)
    out = _attention(q_BTKGD, k_BTKDh, v_BTKDh, seg_BT2, scale, min(block_q, T), min(block_kv, T))
    return out.reshape(B, T, H, Dh)
