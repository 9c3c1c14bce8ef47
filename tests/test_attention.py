"""Every `model.attention` implementation equals the dense `xla` reference on outputs and gradients (float32,
<= 1e-5 relative): causal, right-padded and packed-segment masks, odd lengths, GQA and MQA. blockwise runs on CPU,
splash in Pallas interpret mode, cudnn only where a GPU exists (bfloat16: cuDNN has no float32 kernel)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from synthetic import TINY_MODEL, tiny_config

from rpo_jax.config.schema import ConfigError
from rpo_jax.model.attention import AttentionMask, attend, attention_mask, resolve_attention, xla_attention
from rpo_jax.model.blockwise_attention import _live_pairs, blockwise_attention
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import make_mesh

SCALE = 0.3


def segments(kind: str, B: int, T: int) -> np.ndarray:
    """[B, T] segment ids: one sequence per row (causal), right padding, or packed sequences then padding."""
    seg = np.ones((B, T), np.int32)
    if kind == "right_padded":
        for b in range(B):
            seg[b, T - 3 - 7 * b :] = 0
    elif kind == "packed":
        for b in range(B):
            cuts = sorted({T // 5 + b, T // 2, 3 * T // 4 - 2 * b})
            for i, cut in enumerate(cuts):
                seg[b, cut:] = i + 2
            seg[b, T - 4 - b :] = 0
    return seg


def qkv(B: int, T: int, H: int, K: int, Dh: int, dtype=jnp.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, k, v, w = (rng.normal(size=(B, T, n, Dh)) for n in (H, K, K, H))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v)), jnp.asarray(w, jnp.float32)


def value_and_grads(fn, q, k, v, w):
    """Output and d(sum(out · w))/d(q, k, v): a random cotangent reaches every row."""

    def objective(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def reference(seg):
    mask = attention_mask(jnp.asarray(seg), jnp.asarray(seg))
    return lambda q, k, v: xla_attention(q, k, v, mask, scale=SCALE)


def assert_close(got, want, rel: float, where=None):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if where is not None:  # compare only real (non-padding) rows
        got, want = got[where], want[where]
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= rel, f"relative error {err:.3g} > {rel}"


@pytest.mark.parametrize("kind", ["causal", "right_padded", "packed"])
@pytest.mark.parametrize("T,H,K,blocks", [(45, 4, 2, (16, 8)), (37, 4, 1, (8, 16)), (24, 2, 2, (512, 512))])
def test_blockwise_equals_xla(kind, T, H, K, blocks):
    seg = segments(kind, 2, T)
    (q, k, v), w = qkv(2, T, H, K, 8)
    block_q, block_kv = blocks

    def blockwise(q, k, v):
        return blockwise_attention(q, k, v, jnp.asarray(seg), scale=SCALE, block_q=block_q, block_kv=block_kv)

    got = value_and_grads(jax.jit(blockwise), q, k, v, w)
    want = value_and_grads(reference(seg), q, k, v, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, r, 1e-5)


def test_blockwise_skips_blocks_whose_segments_never_meet():
    # Rows of text then padding: a padding query block never meets a text key block, so that pair is skipped
    # (above-diagonal pairs are outside the causal loop bounds and never reach this table).
    seg = np.zeros((2, 64), np.int32)
    seg[:, :32] = 1
    blocks = jnp.moveaxis(jnp.asarray(seg).reshape(2, 4, 16), 1, 0)  # [n, B, block]
    live = np.asarray(_live_pairs(blocks, blocks))
    assert not live[2:, :2].any() and live[:2, :2].all() and live[2:, 2:].all()


def test_blockwise_memory_is_linear_in_length():
    # Forward + backward compiled: the temporaries stay well below ONE [B, H, T, T] float32 score tensor.
    B, T, H = 1, 2048, 2
    seg = jnp.ones((B, T), jnp.int32)
    (q, k, v), w = qkv(B, T, H, 1, 8)

    def loss(q, k, v):
        return jnp.sum(blockwise_attention(q, k, v, seg, scale=SCALE, block_q=128, block_kv=128) * w)

    temp = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    assert temp < B * H * T * T * 4 / 4


@pytest.mark.parametrize("kind", ["causal", "right_padded", "packed"])
def test_splash_interpret_equals_xla(kind):
    # T = 300 is padded to 384 = 3 blocks of 128; 4 query heads on 2 kv heads (GQA).
    T = 300
    seg = segments(kind, 2, T)
    (q, k, v), w = qkv(2, T, 4, 2, 16, seed=1)
    mask = AttentionMask(jnp.asarray(seg))

    def splash(q, k, v):
        return attend("splash", q, k, v, mask, scale=SCALE, interpret=True)

    got = value_and_grads(jax.jit(splash), q, k, v, w)
    want = value_and_grads(reference(seg), q, k, v, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, r, 1e-5)


def test_splash_interpret_sharded_equals_unsharded():
    # With a mesh the kernel runs per shard under shard_map (batch over data×fsdp, heads over tensor).
    mesh = make_mesh(tiny_config(mesh={"data": 2, "fsdp": 2, "tensor": 2}).mesh)
    T = 128
    seg = segments("right_padded", 4, T)
    (q, k, v), w = qkv(4, T, 4, 2, 16, seed=2)
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor", None))
    q, k, v = (jax.device_put(x, spec) for x in (q, k, v))
    mask = AttentionMask(jax.device_put(jnp.asarray(seg), NamedSharding(mesh, PartitionSpec(("data", "fsdp")))))
    sharded = jax.jit(lambda q, k, v: attend("splash", q, k, v, mask, scale=SCALE, mesh=mesh, interpret=True))
    assert_close(sharded(q, k, v), reference(seg)(q, k, v), 1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs an NVIDIA GPU")
@pytest.mark.parametrize("kind", ["causal", "right_padded", "packed"])
def test_cudnn_equals_xla_on_real_tokens(kind):
    T = 258  # even: cuDNN's bias-free path takes any length; 258 is not a multiple of its 128 tiles
    seg = segments(kind, 2, T)
    (q, k, v), w = qkv(2, T, 8, 2, 64, dtype=jnp.bfloat16)
    real = np.broadcast_to((seg != 0)[:, :, None, None], (2, T, 8, 64))
    w = w * real  # the loss never reads padding rows; cuDNN returns zeros there instead of xla's values
    max_segments = 4 if kind == "packed" else 1
    mask = AttentionMask(jnp.asarray(seg), max_segments=max_segments)
    got = value_and_grads(jax.jit(lambda q, k, v: attend("cudnn", q, k, v, mask, scale=SCALE)), q, k, v, w)
    want = value_and_grads(reference(seg), q, k, v, w)
    assert_close(got[0], want[0], 2e-2, where=real)
    for g, r in zip(got[1], want[1]):
        assert_close(g, r, 2e-2)


def test_model_blockwise_equals_xla_logits_and_gradients():
    # 601 tokens: two 512-token query blocks, the second padded; right padding and a packed row.
    B, T = 2, 601
    seg = segments("right_padded", B, T)
    seg[1] = segments("packed", 1, T)[0]
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, TINY_MODEL["vocab_size"], size=(B, T)), jnp.int32)
    positions = jnp.asarray(np.tile(np.arange(T), (B, 1)), jnp.int32)
    results = {}
    for impl in ("xla", "blockwise"):
        cfg = tiny_config(model={**TINY_MODEL, "attention": impl, "max_position_embeddings": 1024})
        model = Llama(cfg.model, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def loss(params, graphdef=graphdef):
            logits = nnx.merge(graphdef, params)(tokens, positions, jnp.asarray(seg))
            return jnp.sum(jax.nn.log_softmax(logits)[..., 5] * (jnp.asarray(seg) != 0)), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        results[impl] = (logits, grads)
    assert_close(results["blockwise"][0], results["xla"][0], 1e-5)
    for g, r in zip(jax.tree.leaves(results["blockwise"][1]), jax.tree.leaves(results["xla"][1])):
        assert_close(g, r, 1e-5)


@pytest.mark.parametrize(
    "setting,platform,dtype,expected",
    [
        ("auto", "cpu", "float32", "blockwise"),
        ("auto", "tpu", "bfloat16", "splash"),
        ("auto", "gpu", "bfloat16", "cudnn"),
        ("auto", "gpu", "float32", "blockwise"),  # cuDNN has no float32 kernel
        ("xla", "gpu", "bfloat16", "xla"),
        ("blockwise", "tpu", "float32", "blockwise"),
    ],
)
def test_auto_picks_per_backend(setting, platform, dtype, expected):
    cfg = tiny_config(model={**TINY_MODEL, "attention": setting, "dtype": dtype}).model
    assert resolve_attention(cfg, platform)[0] == expected


@pytest.mark.parametrize(
    "setting,platform,dtype,message",
    [
        ("cudnn", "cpu", "bfloat16", "model.attention=cudnn needs an NVIDIA GPU backend; this one is cpu"),
        ("cudnn", "tpu", "bfloat16", "this one is tpu"),
        ("cudnn", "gpu", "float32", "no float32 kernel"),
        ("splash", "cpu", "float32", "model.attention=splash is a TPU Pallas kernel; this backend is cpu"),
        ("splash", "gpu", "bfloat16", "this backend is gpu"),
    ],
)
def test_unrunnable_choice_names_the_backend(setting, platform, dtype, message):
    cfg = tiny_config(model={**TINY_MODEL, "attention": setting, "dtype": dtype}).model
    with pytest.raises(ConfigError, match=message):
        resolve_attention(cfg, platform)


def test_bad_attention_name_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention must be one of"):
        tiny_config(model={**TINY_MODEL, "attention": "flash"})
