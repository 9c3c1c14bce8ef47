"""Model structure checks that need no reference library: parameter counts, causality, scan/remat equivalence."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from llama_hf_fixtures import tiny_config

from rpo_jax.config.loading import load_config
from rpo_jax.model.llama import Llama, count_params

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
L = 10


@pytest.mark.parametrize(
    "preset, published",
    [
        ("llama3_1_8b.yaml", 8_030_261_248),
        ("llama3_1_70b.yaml", 70_553_706_496),
        ("llama3_2_1b.yaml", 1_235_814_400),  # tied embeddings
        ("smollm2_135m.yaml", 134_515_008),  # tied embeddings
    ],
)
def test_preset_param_counts_match_published(preset, published):
    assert count_params(load_config(CONFIGS / preset).model) == published


@functools.cache
def _loss_and_grads(cfg, seed=0):
    """Mean token log-likelihood and its gradient w.r.t. all parameters (params from the same seed)."""
    model = Llama(cfg, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, L))
    positions = np.broadcast_to(np.arange(L), tokens.shape)
    segments = np.ones_like(tokens)
    segments[1, 7:] = 0  # padding must not change the rest

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, positions, segments)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.mean(picked * segments[:, 1:]), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, nnx.to_pure_dict(grads)


@pytest.mark.parametrize(
    "variant",
    [
        dict(scan_layers=False),
        dict(remat_policy="full"),
        dict(remat_policy="minimal", scan_layers=False),
        dict(remat_policy="save_qkv_proj"),
        dict(remat_policy="save_dot_except_mlp", mlp_chunk_size=4),  # 10 positions: chunks 4, 4, 2 (+2 padding)
        dict(mlp_chunk_size=3, scan_layers=False),
        dict(attention="xla"),  # the default auto is blockwise on CPU
    ],
)
def test_scan_remat_chunking_and_attention_do_not_change_logits_or_gradients(variant):
    cfg = tiny_config(num_hidden_layers=2, scan_layers=True, remat_policy="none")
    ref_value, ref_logits, ref_grads = _loss_and_grads(cfg)
    value, logits, grads = _loss_and_grads(dataclasses.replace(cfg, **variant))
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(value, ref_value, atol=1e-6, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, ref_grads)
    assert float(jnp.abs(ref_grads["layers"]["wq_DHDh"]).max()) > 0


@pytest.mark.parametrize("scan_layers", [True, False])
def test_outputs_do_not_depend_on_later_positions(scan_layers):
    # Untied embeddings and distinct tokens: row `tokens[s]` of the embedding is used only at position s, so
    # d(output_t)/d(embedding row of position s) is the gradient w.r.t. that input embedding.
    cfg = tiny_config(tied=False, scan_layers=scan_layers)
    model = Llama(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    tokens = np.random.default_rng(0).permutation(cfg.vocab_size)[:L][None]
    positions = np.arange(L)[None]
    probe = jax.random.normal(jax.random.key(0), (cfg.vocab_size,))

    def outputs(embed_VD):
        p = nnx.to_pure_dict(params)
        p["embed_VD"] = embed_VD
        state = jax.tree.map(lambda x: x, params)
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graphdef, state)(tokens, positions)[0] @ probe  # [L]

    jacobian_LVD = jax.jit(jax.jacrev(outputs))(model.embed_VD[...])
    # [t, s]: largest |d output_t / d input embedding at position s|.
    dependence_LL = np.abs(np.asarray(jacobian_LVD[:, tokens[0]])).max(axis=-1)
    assert np.all(np.triu(dependence_LL, k=1) == 0.0), dependence_LL
    assert np.all(dependence_LL[np.tril_indices(L)] > 0.0), dependence_LL
