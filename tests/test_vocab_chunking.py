"""`loss.vocab_chunk_size: 0` (the shipped default) picks the vocabulary chunk from V and the positions per chunk:
compiled temporaries stay flat as V grows (XLA's memory analysis, not timing), and scores and gradients equal the
unchunked computation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rpo_jax.config.schema import LossConfig, ModelConfig
from rpo_jax.model.llama import Llama
from rpo_jax.objective.logps import AUTO_VOCAB_CHUNK_LOGITS, auto_vocab_chunk_size, chunk_shape, paired_logps
from rpo_jax.objective.losses import loss_and_metrics

SMALL = ModelConfig(
    vocab_size=20000,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    initializer_range=0.3,
)


@pytest.mark.parametrize("positions", [1, 64, 1000, 1024, 4096, 100_000])
@pytest.mark.parametrize("vocab", [97, 32000, 128_000, 128_256, 262_144])
def test_auto_width_bounds_a_chunk_and_splits_evenly(positions, vocab):
    width = auto_vocab_chunk_size(positions, vocab)
    if positions * vocab <= AUTO_VOCAB_CHUNK_LOGITS or vocab <= 128:
        assert width == vocab
        return
    assert width % 128 == 0 and width < vocab
    assert positions * width <= max(AUTO_VOCAB_CHUNK_LOGITS, positions * 128)
    num_chunks = -(-vocab // width)
    # As few chunks as the bound allows, and near-equal ones: the last is never a sliver.
    widest_allowed = max(128, AUTO_VOCAB_CHUNK_LOGITS // positions // 128 * 128)
    assert -(-vocab // (num_chunks - 1)) > widest_allowed
    assert vocab - (num_chunks - 1) * width >= width - 128 * num_chunks


def test_explicit_chunk_sizes_are_honoured():
    assert chunk_shape(8, 128, 128_000, 1024, 4096) == (128, 4096)
    assert chunk_shape(8, 128, 128_000, 1024, 10**9) == (128, 128_000)  # >= V: the whole vocabulary
    cols, width = chunk_shape(8, 1024, 128_000, 1024, 0)
    assert cols == 128 and width == auto_vocab_chunk_size(8 * 128, 128_000) < 128_000


def _batch(seed, B=4, G=2, L=128, vocab=SMALL.vocab_size):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(B, G, L)).astype(np.int32)
    lengths = rng.integers(L // 2, L + 1, size=(B, G))
    lengths[0, 0] = L
    segment_ids = (np.arange(L) < lengths[..., None]).astype(np.int32)
    loss_mask = segment_ids.astype(bool) & (np.arange(L) >= L // 4)
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, G, L)).copy()
    return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}


def test_auto_chunked_scores_and_gradients_equal_unchunked():
    model = Llama(SMALL, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    batch = _batch(1)
    B, G, L = batch["tokens"].shape
    logits_chunk_size = 1024
    _, auto_width = chunk_shape(B * G, L, SMALL.vocab_size, logits_chunk_size, 0)
    assert auto_width < SMALL.vocab_size, "the auto rule must chunk this vocabulary for the test to mean anything"

    def scores_and_grads(vocab_chunk_size):
        def total(state):
            s = paired_logps(
                nnx.merge(graphdef, state),
                batch,
                logits_chunk_size=logits_chunk_size,
                vocab_chunk_size=vocab_chunk_size,
            )
            # Different weights per row, so a gradient mixed up between rows would show.
            weights = jnp.arange(1, B * G + 1, dtype=jnp.float32).reshape(B, G)
            return jnp.sum(weights * s.logps), s

        return jax.jit(jax.value_and_grad(total, has_aux=True))(state)

    (_, auto), auto_grads = scores_and_grads(0)
    (_, full), full_grads = scores_and_grads(SMALL.vocab_size)
    np.testing.assert_allclose(auto.logps, full.logps, rtol=1e-5)
    np.testing.assert_allclose(auto.counts, full.counts)
    np.testing.assert_allclose(auto.mean_logit_sums, full.mean_logit_sums, rtol=1e-5)
    for a, f in zip(jax.tree.leaves(auto_grads), jax.tree.leaves(full_grads), strict=True):
        scale = float(jnp.max(jnp.abs(f)))
        np.testing.assert_allclose(a, f, atol=1e-5 * scale + 1e-8)


def _compiled_temp_bytes(vocab: int, loss_cfg: LossConfig, B=16, G=2, L=512) -> int:
    """Temp bytes of jit(value_and_grad(DPO loss through paired_logps)), compiled on abstract shapes only."""
    cfg = dataclasses.replace(SMALL, vocab_size=vocab, hidden_size=64, intermediate_size=128, head_dim=32)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))

    def loss(state, batch):
        scores = paired_logps(
            nnx.merge(graphdef, state),
            batch,
            logits_chunk_size=loss_cfg.logits_chunk_size,
            vocab_chunk_size=loss_cfg.vocab_chunk_size,
        )
        per_example, _ = loss_and_metrics(scores, batch["ref_logps"], batch["margin"], loss_cfg)
        return jnp.mean(per_example)

    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
    batch = {
        "tokens": i32(B, G, L),
        "positions": i32(B, G, L),
        "segment_ids": i32(B, G, L),
        "loss_mask": jax.ShapeDtypeStruct((B, G, L), jnp.bool_),
        "margin": i32(B),
        "ref_logps": jax.ShapeDtypeStruct((B, G), jnp.float32),
    }
    compiled = jax.jit(jax.value_and_grad(loss)).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_default_temporaries_flat_in_vocab():
    D = 64
    default = LossConfig()  # shipped defaults: 1,024 positions per chunk, vocab_chunk_size 0 (auto)
    assert default.vocab_chunk_size == 0
    vocabs = (32768, 131072, 262144)
    temps = [_compiled_temp_bytes(v, default) for v in vocabs]
    for (v0, t0), (v1, t1) in zip(zip(vocabs, temps), zip(vocabs[1:], temps[1:])):
        # What V may cost: the LM head and embedding gradients (fp32), plus 64 B per entry for the small
        # per-vocab-chunk carries of the scan; logits buffers must not grow.
        allowance = (2 * D * 4 + 64) * (v1 - v0)
        assert t1 - t0 <= allowance, (v0, t0, v1, t1, allowance)
    # The same bound fails without chunking (the test can fail): the logits chunk grows with V.
    unchunked = [_compiled_temp_bytes(v, dataclasses.replace(default, vocab_chunk_size=v)) for v in vocabs[:2]]
    assert unchunked[1] - unchunked[0] > (2 * D * 4 + 64) * (vocabs[1] - vocabs[0]) + 512 * 2**20, unchunked
