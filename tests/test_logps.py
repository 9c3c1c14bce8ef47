"""Chunked paired log-probs vs a naive full-logits computation; memory bound of the compiled loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rpo_jax.config.schema import LoraConfig, LossConfig, ModelConfig
from rpo_jax.model.llama import Llama
from rpo_jax.objective.logps import paired_logps, score_hidden
from rpo_jax.objective.losses import loss_and_metrics

CFG = ModelConfig(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    initializer_range=0.3,
)


def naive_scores(model, batch, use_lora=True):
    """Reference: full [N, L, V] fp32 logits, log-softmax, per-token gather, masked sums."""
    tokens = jnp.asarray(batch["tokens"])
    B, G, L = tokens.shape
    rows = {k: jnp.reshape(jnp.asarray(batch[k]), (B * G, L)) for k in ("tokens", "positions", "segment_ids")}
    logits = model(rows["tokens"], rows["positions"], rows["segment_ids"], use_lora=use_lora).astype(jnp.float32)
    logp_tok = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), rows["tokens"][:, 1:, None], -1)[..., 0]
    mask = jnp.reshape(jnp.asarray(batch["loss_mask"]), (B * G, L))[:, 1:] != 0
    logps = jnp.sum(jnp.where(mask, logp_tok, 0.0), axis=1)
    mean_logits = jnp.sum(jnp.where(mask, jnp.mean(logits[:, :-1], -1), 0.0), axis=1)
    return logps.reshape(B, G), mask.sum(1).reshape(B, G).astype(jnp.float32), mean_logits.reshape(B, G)


def make_batch(seed, B=3, G=2, L=20, vocab=97, extra_pad=0, holes=False):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (B, G, L)).astype(np.int32)
    loss_mask = np.zeros(tokens.shape, bool)
    segment_ids = np.zeros(tokens.shape, np.int32)
    for b in range(B):
        for g in range(G):
            n = int(rng.integers(8, L + 1))
            p = int(rng.integers(2, n - 1))
            segment_ids[b, g, :n] = 1
            loss_mask[b, g, p:n] = True
            if holes:  # non-contiguous scored positions (e.g. several assistant turns scored)
                loss_mask[b, g, p + 1 : p + 3] = False
                loss_mask[b, g, 1] = True
            tokens[b, g, n:] = 0
    pad = ((0, 0), (0, 0), (0, extra_pad))
    tokens, loss_mask, segment_ids = (np.pad(x, pad) for x in (tokens, loss_mask, segment_ids))
    positions = np.broadcast_to(np.arange(tokens.shape[-1], dtype=np.int32), tokens.shape).copy()
    return {
        "tokens": tokens,
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
        "margin": np.zeros((B,), np.int32),
    }


@pytest.fixture(scope="module")
def model():
    return Llama(CFG, rngs=nnx.Rngs(0))


def jitted_scores(model, batch, **kwargs):
    """paired_logps under jit (eager op-by-op execution is slow on CPU)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, batch: paired_logps(nnx.merge(graphdef, state), batch, **kwargs))(state, batch)


def jitted_naive(model, batch, use_lora=True):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, batch: naive_scores(nnx.merge(graphdef, state), batch, use_lora))(state, batch)


@pytest.mark.parametrize(
    "chunk,vocab_chunk,holes",
    [(1, 0, False), (6, 0, True), (16, 10, False), (64, 32, True), (4096, 200, False), (7, 96, True)],
)
def test_chunked_equals_naive(model, chunk, vocab_chunk, holes):
    batch = make_batch(0, holes=holes)
    want_logps, want_counts, want_mean_logits = jitted_naive(model, batch)
    got = jitted_scores(model, batch, logits_chunk_size=chunk, vocab_chunk_size=vocab_chunk)
    assert got.logps.shape == (3, 2) and got.logps.dtype == jnp.float32
    np.testing.assert_allclose(got.logps, want_logps, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got.counts, want_counts)
    np.testing.assert_allclose(got.mean_logit_sums, want_mean_logits, rtol=1e-5, atol=1e-5)


def test_padding_amount_does_not_matter(model):
    short = make_batch(1)
    long = make_batch(1, extra_pad=13)  # same rng draws; only 13 more padding columns
    for k in ("tokens", "loss_mask", "segment_ids"):
        np.testing.assert_array_equal(long[k][..., :20], short[k])
    long["tokens"][..., 20:] = 77  # whatever sits in padding is never seen nor scored
    a = jitted_scores(model, short, logits_chunk_size=8)
    b = jitted_scores(model, long, logits_chunk_size=8)
    np.testing.assert_allclose(a.logps, b.logps, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(a.counts, b.counts)


def test_only_masked_targets_count(model):
    batch = make_batch(2)
    base = jitted_scores(model, batch, logits_chunk_size=8)
    # Scoring one more prompt token adds exactly that token's log-prob; nothing else moves.
    b, g, t = 1, 0, int(np.argmax(batch["loss_mask"][1, 0])) - 1
    assert t >= 1 and not batch["loss_mask"][b, g, t]
    logits = model(
        jnp.asarray(batch["tokens"][b, g][None]),
        jnp.asarray(batch["positions"][b, g][None]),
        jnp.asarray(batch["segment_ids"][b, g][None]),
    )
    token_logp = jax.nn.log_softmax(logits[0, t - 1])[batch["tokens"][b, g, t]]
    wider = {**batch, "loss_mask": batch["loss_mask"].copy()}
    wider["loss_mask"][b, g, t] = True
    got = jitted_scores(model, wider, logits_chunk_size=8)
    expected = np.asarray(base.logps).copy()
    expected[b, g] += float(token_logp)
    np.testing.assert_allclose(got.logps, expected, rtol=1e-6, atol=1e-5)
    assert got.counts[b, g] == base.counts[b, g] + 1
    # The rejected row's prompt tokens differ from the chosen's only where the mask excludes them as targets:
    # changing a token after the scored span (a target nobody scores) changes nothing.
    after = {**batch, "tokens": batch["tokens"].copy()}
    last = int(np.nonzero(batch["segment_ids"][0, 1])[0][-1])
    after["tokens"][0, 1, last + 1 :] = 5
    np.testing.assert_allclose(jitted_scores(model, after, logits_chunk_size=8).logps, base.logps, atol=1e-6)


@pytest.mark.parametrize("chunk,vocab_chunk", [(8, 0), (16, 40)])
def test_gradients_match_naive(model, chunk, vocab_chunk):
    batch = make_batch(3)
    graphdef, state = nnx.split(model)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)), jnp.float32)

    def chunked(state):
        return jnp.sum(
            weights
            * paired_logps(
                nnx.merge(graphdef, state), batch, logits_chunk_size=chunk, vocab_chunk_size=vocab_chunk
            ).logps
        )

    def naive(state):
        return jnp.sum(weights * naive_scores(nnx.merge(graphdef, state), batch)[0])

    got = jax.jit(jax.grad(chunked))(state)
    want = jax.jit(jax.grad(naive))(state)
    for (path, g), (_, w) in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(want)):
        scale = float(jnp.max(jnp.abs(w))) + 1e-6
        assert float(jnp.max(jnp.abs(g - w))) <= 1e-5 * max(1.0, scale), jax.tree_util.keystr(path)


def test_use_lora_false_is_the_base_model():
    lora = LoraConfig(rank=4, alpha=8.0)
    adapted = Llama(CFG, lora, rngs=nnx.Rngs(0))
    for name in adapted.layers.lora_names:  # non-zero B so the adapters actually change the output
        var = getattr(adapted.layers, f"lora_b_{name}")
        var[...] = 0.5 * jax.random.normal(jax.random.key(1), var[...].shape)
    batch = make_batch(4)
    base = jitted_scores(adapted, batch, logits_chunk_size=8, use_lora=False)
    np.testing.assert_allclose(base.logps, jitted_naive(adapted, batch, use_lora=False)[0], rtol=1e-6, atol=1e-5)
    with_lora = jitted_scores(adapted, batch, logits_chunk_size=8)
    np.testing.assert_allclose(with_lora.logps, jitted_naive(adapted, batch)[0], rtol=1e-6, atol=1e-5)
    assert float(jnp.max(jnp.abs(with_lora.logps - base.logps))) > 1e-2


def test_score_hidden_rejects_bad_chunks():
    h = jnp.zeros((2, 4, 8))
    tokens = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ValueError, match="logits_chunk_size"):
        score_hidden(h, tokens, tokens, jnp.zeros((8, 16)), logits_chunk_size=0)
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        score_hidden(h, tokens, tokens, jnp.zeros((8, 16)), logits_chunk_size=4, vocab_chunk_size=-1)


def _compiled_temp_bytes(vocab: int, B: int, G: int, L: int, logits_chunk_size: int, vocab_chunk_size: int) -> int:
    """Temp bytes of jit(value_and_grad(DPO loss through paired_logps)), compiled on abstract shapes only."""
    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    loss_cfg = LossConfig(logits_chunk_size=logits_chunk_size, vocab_chunk_size=vocab_chunk_size)
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    def loss(state, batch):
        scores = paired_logps(
            nnx.merge(graphdef, state),
            batch,
            logits_chunk_size=loss_cfg.logits_chunk_size,
            vocab_chunk_size=loss_cfg.vocab_chunk_size,
        )
        per_example, _ = loss_and_metrics(scores, batch["ref_logps"], batch["margin"], loss_cfg)
        return jnp.mean(per_example)

    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
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


@pytest.mark.parametrize("vocab_chunk_size", [0, 16384])
def test_full_logits_never_materialised(vocab_chunk_size):
    # 16k tokens. L is kept at 512 because the model's XLA attention holds [B·G, H, L, L] scores, which at L=2048
    # alone would exceed the bound; the response fraction does not enter: the memory of the kernel is static.
    B, G, L, V = 16, 2, 512, 131072
    temp = _compiled_temp_bytes(V, B, G, L, logits_chunk_size=256, vocab_chunk_size=vocab_chunk_size)
    full_logits = B * G * L * V * 4
    assert temp < 0.1 * full_logits, (temp, full_logits)


def test_vocab_growth_costs_only_the_head_and_embedding():
    B, G, L, D = 16, 2, 512, 64
    small = _compiled_temp_bytes(32768, B, G, L, logits_chunk_size=256, vocab_chunk_size=8192)
    large = _compiled_temp_bytes(131072, B, G, L, logits_chunk_size=256, vocab_chunk_size=8192)
    extra_vocab = 131072 - 32768
    # LM head weight + its gradient, embedding + its gradient, fp32.
    allowance = 4 * extra_vocab * D * 4
    assert large - small <= allowance, (small, large, allowance)
