"""Per-sequence log-probs of `[B, G, L]` preference groups without materialising `[B·G, L, V]` logits.

One forward over the `B·G` rows (row `b·G + g`) returns final hidden states; the
LM head and an fp32 log-softmax then run only where a token is scored:

    logp[b, g] = Σ_t loss_mask[t+1] · log_softmax(logits[t])[tokens[t+1]]          (docs/algorithms.md §1)

How the scored positions are visited: each row's scored positions are moved to the front of the row by a stable
per-row argsort (no assumption that they are contiguous), and the compacted `[N, L]` grid is processed in chunks
of columns by a `lax.scan`. A chunk beyond the longest row's scored count is skipped at run time by `lax.cond`, so
prompt and padding positions cost no LM-head FLOPs, while every shape stays static. Each chunk (and each vocab
chunk inside it) is wrapped in `jax.checkpoint`: the backward recomputes a chunk's logits instead of storing them,
so logits memory is a few chunk-sized buffers, whatever L. The vocabulary is chunked too (online logsumexp); by
default (`vocab_chunk_size=0`) the width is chosen from V and the positions per chunk, so that memory does not grow
with V either. Rows never mix, so the batch axis keeps its sharding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import BATCH_AXES


class SequenceScores(NamedTuple):
    """Per-sequence sums over scored tokens, all fp32 with the batch's leading shape (`[B, G]` or `[N]`)."""

    logps: jax.Array  # Σ log p(target) over scored tokens
    counts: jax.Array  # number of scored tokens (SFT/NLL normalisation, IPO/SimPO lengths)
    mean_logit_sums: jax.Array  # Σ over scored tokens of the vocab-mean logit (TRL `logits/*`); no gradient


def shift_targets(tokens_NL: jax.Array, loss_mask_NL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets/mask aligned with the logits: position t predicts token t+1; the last position predicts nothing."""
    targets_NL = jnp.concatenate([tokens_NL[:, 1:], jnp.zeros_like(tokens_NL[:, :1])], axis=1)
    mask_NL = jnp.asarray(loss_mask_NL) != 0
    scored_NL = jnp.concatenate([mask_NL[:, 1:], jnp.zeros_like(mask_NL[:, :1])], axis=1)
    return targets_NL.astype(jnp.int32), scored_NL


def _full_vocab_stats(h_NCD, lm_head_DV, targets_NC):
    logits_NCV = jnp.einsum("ncd,dv->ncv", h_NCD, lm_head_DV.astype(h_NCD.dtype), preferred_element_type=jnp.float32)
    lse_NC = jax.nn.logsumexp(logits_NCV, axis=-1)
    target_logit_NC = jnp.take_along_axis(logits_NCV, targets_NC[..., None], axis=-1)[..., 0]
    return target_logit_NC, lse_NC


def _fold_vocab_chunk(carry, h_NCD, w_DVc, targets_NC, offset):
    """Online logsumexp: folds one vocab chunk's logits into (running max, Σexp, target logit)."""
    max_NC, sum_exp_NC, target_logit_NC = carry
    logits_NCVc = jnp.einsum("ncd,dv->ncv", h_NCD, w_DVc.astype(h_NCD.dtype), preferred_element_type=jnp.float32)
    # The max only shifts the exponent for stability; lse is independent of it, so it needs no gradient.
    new_max_NC = jax.lax.stop_gradient(jnp.maximum(max_NC, jnp.max(logits_NCVc, axis=-1)))
    sum_exp_NC = sum_exp_NC * jnp.exp(max_NC - new_max_NC) + jnp.sum(
        jnp.exp(logits_NCVc - new_max_NC[..., None]), axis=-1
    )
    width = w_DVc.shape[1]
    local_NC = targets_NC - offset
    inside_NC = (local_NC >= 0) & (local_NC < width)
    picked_NC = jnp.take_along_axis(logits_NCVc, jnp.clip(local_NC, 0, width - 1)[..., None], axis=-1)[..., 0]
    target_logit_NC = target_logit_NC + jnp.where(inside_NC, picked_NC, 0.0)
    return new_max_NC, sum_exp_NC, target_logit_NC


# `loss.vocab_chunk_size: 0` (auto) bounds one chunk's logits to this many values (32 MiB in fp32; the backward keeps
# about three such buffers live), so scoring memory stays flat as V grows. Without it, temporaries grew 13 KB per
# vocabulary entry at 1,024 positions per chunk (docs/benchmarks.md).
AUTO_VOCAB_CHUNK_LOGITS = 8 * 2**20
VOCAB_CHUNK_MULTIPLE = 128  # lane width of TPU vector registers; also a whole number of AVX-512 fp32 vectors


def auto_vocab_chunk_size(positions: int, vocab: int) -> int:
    """Vocab chunk width for `positions` scored at once: the whole vocabulary (returns `vocab`) when its logits fit
    `AUTO_VOCAB_CHUNK_LOGITS`, else the fewest equal chunks (rounded up to a multiple of 128) that fit it."""
    step = VOCAB_CHUNK_MULTIPLE
    cap = max(step, AUTO_VOCAB_CHUNK_LOGITS // positions // step * step)
    if positions * vocab <= AUTO_VOCAB_CHUNK_LOGITS or vocab <= cap:
        return vocab
    num_chunks = -(-vocab // cap)
    width = -(-vocab // num_chunks)
    # width = ceil(V / n) <= cap and cap is a multiple of `step`, so rounding up keeps the width within the cap.
    return -(-width // step) * step


def chunk_shape(rows: int, length: int, vocab: int, logits_chunk_size: int, vocab_chunk_size: int) -> tuple[int, int]:
    """(positions per row, vocab entries) of one LM-head chunk, as `score_hidden` runs it on `[rows, length]`."""
    cols = max(1, min(length, logits_chunk_size // rows))
    width = vocab_chunk_size or auto_vocab_chunk_size(rows * cols, vocab)
    return cols, min(width, vocab)


def _chunked_vocab_stats(h_NCD, lm_head_DV, targets_NC, vocab_chunk_size: int):
    vocab = lm_head_DV.shape[1]
    num_full, remainder = divmod(vocab, vocab_chunk_size)
    shape = targets_NC.shape
    carry = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

    @jax.checkpoint
    def step(carry, chunk_index):
        offset = chunk_index * vocab_chunk_size
        # dynamic_slice reads the weight in place: no padded or reshaped copy of the [D, V] head.
        w_DVc = jax.lax.dynamic_slice_in_dim(lm_head_DV, offset, vocab_chunk_size, axis=1)
        return _fold_vocab_chunk(carry, h_NCD, w_DVc, targets_NC, offset), None

    carry, _ = jax.lax.scan(step, carry, jnp.arange(num_full, dtype=jnp.int32))
    if remainder:
        offset = num_full * vocab_chunk_size
        carry = jax.checkpoint(_fold_vocab_chunk, static_argnums=(4,))(
            carry, h_NCD, lm_head_DV[:, offset:], targets_NC, offset
        )
    max_NC, sum_exp_NC, target_logit_NC = carry
    return target_logit_NC, max_NC + jnp.log(sum_exp_NC)


def _score_chunk(h_NCD, targets_NC, scored_NC, owner_NC, lm_head_DV, mean_head_D, vocab_chunk_size: int):
    """(Σ logp, Σ vocab-mean logit) over the scored tokens of one chunk of positions: per row `[N]`, or per
    sequence slot `[N, S]` of packed rows when `owner_NC` is the one-hot `[N, C, S]` slot of each target."""
    if 0 < vocab_chunk_size < lm_head_DV.shape[1]:
        target_logit_NC, lse_NC = _chunked_vocab_stats(h_NCD, lm_head_DV, targets_NC, vocab_chunk_size)
    else:
        target_logit_NC, lse_NC = _full_vocab_stats(h_NCD, lm_head_DV, targets_NC)
    logp_NC = target_logit_NC - lse_NC
    # mean_v(h·W[:, v]) = h·mean_v(W): the metric costs one [D] dot per token instead of a pass over the vocab.
    mean_logit_NC = jax.lax.stop_gradient(jnp.einsum("ncd,d->nc", h_NCD.astype(jnp.float32), mean_head_D))
    logp_NC, mean_logit_NC = jnp.where(scored_NC, logp_NC, 0.0), jnp.where(scored_NC, mean_logit_NC, 0.0)
    if owner_NC is None:
        return jnp.sum(logp_NC, axis=-1), jnp.sum(mean_logit_NC, axis=-1)
    return jnp.einsum("nc,ncs->ns", logp_NC, owner_NC), jnp.einsum("nc,ncs->ns", mean_logit_NC, owner_NC)


def score_hidden(
    h_NLD: jax.Array,
    tokens_NL: jax.Array,
    loss_mask_NL: jax.Array,
    lm_head_DV: jax.Array,
    *,
    logits_chunk_size: int,
    vocab_chunk_size: int = 0,
    sequence_ids_NL: jax.Array | None = None,
    num_slots: int = 0,
) -> SequenceScores:
    """Scores final hidden states `[N, L, D]` against their next tokens; returns `[N]` sums, or `[N, num_slots]`
    sums per sequence of packed rows, where `sequence_ids_NL` gives each token's slot (-1 for none).

    `logits_chunk_size` is the number of positions (over all N rows together) whose logits exist at once: each
    chunk takes `max(1, logits_chunk_size // N)` compacted positions of every row. The vocabulary is split into
    chunks of `vocab_chunk_size` entries (online logsumexp), bounding a chunk's logits to `[N, C, vocab_chunk_size]`;
    a value >= V scores the whole vocabulary at once, and 0 picks the width from N·C and V
    (`auto_vocab_chunk_size`), so memory does not grow with V.
    """
    if logits_chunk_size <= 0:
        raise ValueError(f"logits_chunk_size must be positive, got {logits_chunk_size}")
    if vocab_chunk_size < 0:
        raise ValueError(f"vocab_chunk_size must be >= 0, got {vocab_chunk_size}")
    N, L, D = h_NLD.shape
    targets_NL, scored_NL = shift_targets(tokens_NL, loss_mask_NL)
    packed = sequence_ids_NL is not None
    if packed:  # the slot of each position's target (its next token), as for the targets themselves
        owner_NL = jnp.concatenate([sequence_ids_NL[:, 1:], jnp.full_like(sequence_ids_NL[:, :1], -1)], axis=1)
        counts_N = jnp.sum(jax.nn.one_hot(owner_NL, num_slots, dtype=jnp.int32) * scored_NL[..., None], axis=1)
    else:
        counts_N = jnp.sum(scored_NL, axis=1)

    cols, vocab_chunk_size = chunk_shape(N, L, lm_head_DV.shape[1], logits_chunk_size, vocab_chunk_size)
    num_chunks = -(-L // cols)
    padded = num_chunks * cols
    # Stable sort puts each row's scored positions first, in their original order.
    order_NL = jnp.argsort(jnp.logical_not(scored_NL).astype(jnp.int8), axis=1, stable=True)
    order_NP = jnp.pad(order_NL, ((0, 0), (0, padded - L)))
    scored_NP = jnp.pad(jnp.take_along_axis(scored_NL, order_NL, axis=1), ((0, 0), (0, padded - L)))
    targets_NP = jnp.take_along_axis(targets_NL, order_NP, axis=1)
    h_NPD = jnp.take_along_axis(h_NLD, order_NP[..., None], axis=1)
    owner_NP = jnp.take_along_axis(owner_NL, order_NP, axis=1) if packed else jnp.zeros((N, padded), jnp.int32)

    def by_chunk(x):  # [N, P, ...] -> [num_chunks, N, cols, ...] as scan inputs
        return jnp.moveaxis(x.reshape(N, num_chunks, cols, *x.shape[2:]), 1, 0)

    mean_head_D = jax.lax.stop_gradient(jnp.mean(lm_head_DV.astype(jnp.float32), axis=1))
    longest = jnp.max(jnp.sum(scored_NL, axis=1))

    sums_shape = (N, num_slots) if packed else (N,)

    def skip(h_NCD, targets_NC, scored_NC, owner_NC, lm_head_DV, mean_head_D):
        return jnp.zeros(sums_shape, jnp.float32), jnp.zeros(sums_shape, jnp.float32)

    # Remat outside the cond: with it inside, scan cannot see that the head weight is loop-invariant and stacks a
    # [D, V] residual per chunk (measured: 2.7 GB vs 0.74 GB temp at V=128k, 64 chunks).
    @jax.checkpoint
    def guarded(live, *args):
        return jax.lax.cond(live, lambda *a: _score_chunk(*a, vocab_chunk_size), skip, *args)

    def body(carry, xs):
        chunk_index, h_NCD, targets_NC, scored_NC, owner_NC = xs
        live = chunk_index * cols < longest
        one_hot_NCS = jax.nn.one_hot(owner_NC, num_slots, dtype=jnp.float32) if packed else None
        sums = guarded(live, h_NCD, targets_NC, scored_NC, one_hot_NCS, lm_head_DV, mean_head_D)
        return (carry[0] + sums[0], carry[1] + sums[1]), None

    init = (jnp.zeros(sums_shape, jnp.float32), jnp.zeros(sums_shape, jnp.float32))
    xs = (
        jnp.arange(num_chunks, dtype=jnp.int32),
        by_chunk(h_NPD),
        by_chunk(targets_NP),
        by_chunk(scored_NP),
        by_chunk(owner_NP),
    )
    (logps_N, mean_logit_sums_N), _ = jax.lax.scan(body, init, xs)
    return SequenceScores(logps_N, counts_N.astype(jnp.float32), mean_logit_sums_N)


def paired_logps(
    model: Llama,
    batch: Mapping[str, jax.Array],
    *,
    logits_chunk_size: int,
    vocab_chunk_size: int = 0,
    use_lora: bool = True,
    lora_dropout_rng: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> SequenceScores:
    """`SequenceScores` of shape `[B, G]` for a batch with `tokens`, `loss_mask`, `segment_ids`, `positions`.

    `use_lora=False` runs the base weights only (the `lora_base` reference forward); `lora_dropout_rng` is passed
    to the model (LoRA dropout in training). With `mesh`, the LM head is gathered once before the chunk loop and
    the rows stay split over the batch axes, so the loop itself has no collectives: otherwise GSPMD re-gathers
    the FSDP-sharded head inside every chunk (a collective per chunk; on CPU meshes this starves the runtime's
    thread pool and deadlocks) and its gradient is reduce-scattered per chunk instead of once.
    """
    tokens_BGL = jnp.asarray(batch["tokens"])
    B, G, L = tokens_BGL.shape

    def rows(name):
        return jnp.reshape(jnp.asarray(batch[name]), (B * G, L))

    h_NLD = model(
        rows("tokens"),
        rows("positions"),
        rows("segment_ids"),
        return_hidden=True,
        use_lora=use_lora,
        lora_dropout_rng=lora_dropout_rng,
        mesh=mesh,
    )
    lm_head_DV = model.lm_head_weight()
    if mesh is not None:
        lm_head_DV = jax.lax.with_sharding_constraint(lm_head_DV, NamedSharding(mesh, PartitionSpec()))
        h_NLD = jax.lax.with_sharding_constraint(h_NLD, NamedSharding(mesh, PartitionSpec(BATCH_AXES, None, None)))
    scores = score_hidden(
        h_NLD,
        rows("tokens"),
        rows("loss_mask"),
        lm_head_DV,
        logits_chunk_size=logits_chunk_size,
        vocab_chunk_size=vocab_chunk_size,
    )
    return SequenceScores(*(x.reshape(B, G) for x in scores))
