"""Losses and metrics: TRL 1.16 goldens, hand-written numpy references for RPO/IOPO, accumulation, validation."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from rpo_jax.config.schema import LossConfig, ModelConfig, RopeConfig
from rpo_jax.model.llama import Llama
from rpo_jax.objective.logps import SequenceScores, paired_logps
from rpo_jax.objective.losses import (
    LOSSES,
    add_metrics,
    finalize_metrics,
    loss_and_metrics,
    needs_reference,
    per_example_loss,
)

ASSETS = Path(__file__).parent / "assets"
LN2 = math.log(2.0)


# ---------------------------------------------------------------- TRL goldens (no torch needed)


def load_tiny_llama(tensors: dict, prefix: str, cfg: ModelConfig) -> Llama:
    """HF LlamaForCausalLM tensors -> our layout (interim loader; rpo_jax/io/hf.py has the general one)."""
    model = Llama(cfg, rngs=nnx.Rngs(0))
    Y, D, H, K, Dh = (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    )

    def stack(name):
        return np.stack([tensors[f"{prefix}model.layers.{i}.{name}"] for i in range(Y)])

    model.embed_VD[...] = tensors[f"{prefix}model.embed_tokens.weight"]
    model.lm_head_DV[...] = tensors[f"{prefix}lm_head.weight"].T
    model.final_norm_D[...] = tensors[f"{prefix}model.norm.weight"]
    layers = model.layers
    layers.input_norm_D[...] = stack("input_layernorm.weight")
    layers.post_attn_norm_D[...] = stack("post_attention_layernorm.weight")
    layers.wq_DHDh[...] = stack("self_attn.q_proj.weight").transpose(0, 2, 1).reshape(Y, D, H, Dh)
    layers.wk_DKDh[...] = stack("self_attn.k_proj.weight").transpose(0, 2, 1).reshape(Y, D, K, Dh)
    layers.wv_DKDh[...] = stack("self_attn.v_proj.weight").transpose(0, 2, 1).reshape(Y, D, K, Dh)
    layers.wo_HDhD[...] = stack("self_attn.o_proj.weight").transpose(0, 2, 1).reshape(Y, H, Dh, D)
    layers.w_gate_DF[...] = stack("mlp.gate_proj.weight").transpose(0, 2, 1)
    layers.w_up_DF[...] = stack("mlp.up_proj.weight").transpose(0, 2, 1)
    layers.w_down_FD[...] = stack("mlp.down_proj.weight").transpose(0, 2, 1)
    return model


def golden_batch(examples, pad_id):
    """[B, 2, L] batch from TRL's pre-tokenized (prompt, chosen, rejected) ids, right-padded."""
    rows = [
        [ex["prompt_ids"] + ex[k], len(ex["prompt_ids"])] for ex in examples for k in ("chosen_ids", "rejected_ids")
    ]
    L = max(len(ids) for ids, _ in rows)
    B = len(examples)
    batch = {k: np.zeros((B * 2, L), np.int32) for k in ("tokens", "loss_mask", "segment_ids")}
    for r, (ids, prompt_len) in enumerate(rows):
        batch["tokens"][r] = ids + [pad_id] * (L - len(ids))
        batch["segment_ids"][r, : len(ids)] = 1
        batch["loss_mask"][r, prompt_len : len(ids)] = 1
    batch = {k: v.reshape(B, 2, L) for k, v in batch.items()}
    batch["positions"] = np.broadcast_to(np.arange(L, dtype=np.int32), (B, 2, L)).copy()
    batch["margin"] = np.zeros((B,), np.int32)
    return batch


@pytest.fixture(scope="module")
def golden():
    data = json.loads((ASSETS / "trl_goldens.json").read_text())
    m = data["model"]
    cfg = ModelConfig(
        vocab_size=m["vocab_size"],
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"],
        head_dim=m["head_dim"],
        rms_norm_eps=m["rms_norm_eps"],
        rope_parameters=RopeConfig(rope_theta=m["rope_theta"]),
    )
    tensors = load_file(str(ASSETS / "trl_tiny_llama.safetensors"))
    batch = golden_batch(data["examples"], m["pad_token_id"])
    scores = {}
    for name in ("policy", "reference"):
        model = load_tiny_llama(tensors, f"{name}.", cfg)
        scores[name] = paired_logps(model, batch, logits_chunk_size=4, vocab_chunk_size=24)
    return data, batch, scores["policy"], scores["reference"].logps


def _our_config(trl_args: dict) -> LossConfig:
    return LossConfig(
        loss_type=tuple(trl_args["loss_type"]),
        loss_weights=tuple(trl_args.get("loss_weights", [1.0] * len(trl_args["loss_type"]))),
        beta=trl_args["beta"],
        label_smoothing=trl_args.get("label_smoothing", 0.0),
    )


def test_logps_match_trl(golden):
    data, _, policy, ref_logps = golden
    result = data["results"]["sigmoid"]
    np.testing.assert_allclose(policy.logps, result["policy_logps"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(ref_logps, result["ref_logps"], rtol=1e-6, atol=1e-5)


# Metrics defined as TRL's; TRL's `num_tokens` counts prompt tokens too (running total), ours scored tokens only.
COMPARED = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "hinge", "robust"])
def test_loss_and_metrics_match_trl(golden, name):
    data, batch, policy, ref_logps = golden
    result = data["results"][name]
    cfg = _our_config(result["trl_args"])
    loss_B, sums = loss_and_metrics(policy, ref_logps, jnp.asarray(batch["margin"]), cfg)
    metrics = finalize_metrics(sums)
    np.testing.assert_allclose(float(jnp.mean(loss_B)), result["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["loss"], result["loss"], rtol=1e-5, atol=1e-5)
    for key in COMPARED:
        np.testing.assert_allclose(metrics[key], result["metrics"][key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_label_smoothing_is_cdpo_not_trl_1_16(golden):
    """TRL 1.16's `sigmoid` ignores label_smoothing (its golden equals plain sigmoid); ours is cDPO as TRL <= 0.28."""
    data, batch, policy, ref_logps = golden
    smoothed, plain = data["results"]["sigmoid_label_smoothing"], data["results"]["sigmoid"]
    assert smoothed["loss"] == plain["loss"]
    eps, beta = smoothed["trl_args"]["label_smoothing"], smoothed["trl_args"]["beta"]
    cfg = _our_config(smoothed["trl_args"])
    loss_B, _ = loss_and_metrics(policy, ref_logps, jnp.asarray(batch["margin"]), cfg)
    z = np.asarray(plain["policy_logps"], np.float64) - np.asarray(plain["ref_logps"], np.float64)
    z = z[:, 0] - z[:, 1]
    log_sig = lambda x: -np.logaddexp(0.0, -x)
    want = np.mean(-(1 - eps) * log_sig(beta * z) - eps * log_sig(-beta * z))
    np.testing.assert_allclose(float(jnp.mean(loss_B)), want, rtol=1e-5, atol=1e-5)
    assert abs(want - plain["loss"]) > 1e-3


def test_sigmoid_plus_sft_against_trl(golden):
    """TRL's sft term is a batch token mean (= our `nll` metric); our `sft` is a per-sequence mean."""
    data, batch, policy, ref_logps = golden
    result, plain = data["results"]["sigmoid_sft"], data["results"]["sigmoid"]
    w_sigmoid, w_sft = result["trl_args"]["loss_weights"]
    cfg = _our_config(result["trl_args"])
    loss_B, sums = loss_and_metrics(policy, ref_logps, jnp.asarray(batch["margin"]), cfg)
    metrics = finalize_metrics(sums)
    np.testing.assert_allclose(w_sigmoid * plain["loss"] + w_sft * metrics["nll"], result["loss"], rtol=1e-5, atol=1e-5)
    counts = batch["loss_mask"].sum(-1)
    per_seq_nll = -np.asarray(result["policy_logps"])[:, 0] / counts[:, 0]
    np.testing.assert_allclose(
        float(jnp.mean(loss_B)), w_sigmoid * plain["loss"] + w_sft * per_seq_nll.mean(), rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------- hand-written references


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def random_inputs(seed, B=6, G=2):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 40, (B, G)).astype(np.float32)
    policy = (-counts * rng.uniform(0.5, 3.0, (B, G))).astype(np.float32)
    ref = (policy + rng.normal(0, 4.0, (B, G))).astype(np.float32)
    margin = rng.integers(0, 8, (B,)).astype(np.int32)
    return policy, ref, counts, margin


def jax_loss_and_grad(policy, ref, counts, margin, cfg):
    fn = lambda p: jnp.mean(per_example_loss(p, jnp.asarray(ref), jnp.asarray(counts), jnp.asarray(margin), cfg))
    value, grad = jax.value_and_grad(fn)(jnp.asarray(policy))
    return float(value), np.asarray(grad)


@pytest.mark.parametrize("mode", ["inside", "outside"])
def test_rpo_loss_and_gradient_match_numpy(mode):
    policy, ref, counts, margin = random_inputs(0)
    cfg = LossConfig(loss_type=("rpo",), beta=0.1, rpo_gamma=0.05, rpo_margin_mode=mode)
    h = policy.astype(np.float64) - ref
    z = h[:, 0] - h[:, 1]
    u = cfg.beta * (z - cfg.rpo_gamma * margin) if mode == "inside" else cfg.beta * z - cfg.rpo_gamma * margin
    want_loss = np.mean(-log_sigmoid(u))
    d = -cfg.beta * sigmoid(-u) / len(u)  # d loss / d z, mean over the batch
    want_grad = np.stack([d, -d], axis=1)
    value, grad = jax_loss_and_grad(policy, ref, counts, margin, cfg)
    np.testing.assert_allclose(value, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)


def test_iopo_loss_and_gradient_match_numpy():
    policy, ref, counts, margin = random_inputs(1, G=4)
    cfg = LossConfig(loss_type=("iopo",), beta=0.1)
    h = policy.astype(np.float64) - ref
    # Paper Eq. 9-10 written out: ½[(h0−h1 + h0−h3) + (h2−h3 + h2−h1)].
    z = 0.5 * ((2 * h[:, 0] - h[:, 1] - h[:, 3]) + (2 * h[:, 2] - h[:, 3] - h[:, 1]))
    want_loss = np.mean(-log_sigmoid(cfg.beta * z))
    d = -cfg.beta * sigmoid(-cfg.beta * z) / len(z)
    want_grad = np.stack([d, -d, d, -d], axis=1)
    value, grad = jax_loss_and_grad(policy, ref, counts, margin, cfg)
    np.testing.assert_allclose(value, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)


def numpy_losses(name, policy, ref, counts, margin, cfg):
    h = policy.astype(np.float64) - ref
    z = h[:, 0] - h[:, 1]
    hn = h / counts
    zn = hn[:, 0] - hn[:, 1]
    b, e = cfg.beta, cfg.label_smoothing
    return {
        "sigmoid": -(1 - e) * log_sigmoid(b * z) - e * log_sigmoid(-b * z),
        "hinge": np.maximum(0.0, 1 - b * z),
        "ipo": (zn - 1 / (2 * b)) ** 2,
        "robust": (-(1 - e) * log_sigmoid(b * z) + e * log_sigmoid(-b * z)) / (1 - 2 * e),
        "sigmoid_norm": -log_sigmoid(b * zn),
        "simpo": -log_sigmoid(b * (policy[:, 0] / counts[:, 0] - policy[:, 1] / counts[:, 1]) - cfg.simpo_gamma),
        "sft": -policy[:, 0] / counts[:, 0],
    }[name]


@pytest.mark.parametrize(
    "name,eps",
    [
        ("sigmoid", 0.0),
        ("sigmoid", 0.2),
        ("hinge", 0.0),
        ("ipo", 0.0),
        ("robust", 0.0),
        ("robust", 0.2),
        ("sigmoid_norm", 0.0),
        ("simpo", 0.0),
        ("sft", 0.0),
    ],
)
def test_pair_losses_match_numpy(name, eps):
    policy, ref, counts, margin = random_inputs(2)
    cfg = LossConfig(loss_type=(name,), beta=0.3, label_smoothing=eps)
    got = per_example_loss(jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(counts), jnp.asarray(margin), cfg)
    np.testing.assert_allclose(got, numpy_losses(name, policy, ref, counts, margin, cfg), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name,links", [("iopo_no_input", ((0, 1), (2, 3))), ("iopo_no_output", ((0, 3), (2, 1)))])
def test_iopo_ablations_are_two_links_and_differ_from_iopo(name, links):
    """Table 4's ablations keep one kind of preference, each with its own link (docs/algorithms.md §2: deleting a
    bracket inside IOPO's single sigmoid would only halve β). Step 0 (h = 0) is still ln 2."""
    policy, ref, counts, margin = random_inputs(4, G=4)
    cfg = LossConfig(loss_type=(name,), beta=0.1)
    h = policy.astype(np.float64) - ref
    want = 0.5 * sum(-log_sigmoid(cfg.beta * (h[:, a] - h[:, b])) for a, b in links)
    got = per_example_loss(jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(counts), jnp.asarray(margin), cfg)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    iopo = per_example_loss(
        jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(counts), jnp.asarray(margin), LossConfig(("iopo",))
    )
    assert np.abs(np.asarray(got) - np.asarray(iopo)).min() > 1e-3
    at_zero = per_example_loss(jnp.asarray(policy), jnp.asarray(policy), jnp.asarray(counts), jnp.asarray(margin), cfg)
    np.testing.assert_allclose(at_zero, np.log(2.0), rtol=1e-6)


def test_sft_uses_rows_0_and_2_for_iopo():
    policy, ref, counts, margin = random_inputs(3, G=4)
    cfg = LossConfig(loss_type=("sft",))
    got = per_example_loss(jnp.asarray(policy), None, jnp.asarray(counts), jnp.asarray(margin), cfg)
    np.testing.assert_allclose(got, -policy[:, 0] / counts[:, 0] - policy[:, 2] / counts[:, 2], rtol=1e-6)


@pytest.mark.parametrize(
    "loss_type,mode,g,want",
    [
        ("sigmoid", "inside", 0, LN2),
        ("rpo", "inside", 3, 0.700675),
        ("rpo", "outside", 3, 0.770957),
        ("hinge", "inside", 0, 1.0),
        ("ipo", "inside", 0, 25.0),
        ("robust", "inside", 0, LN2),
        ("sigmoid_norm", "inside", 0, LN2),
    ],
)
def test_step0_values_from_spec_table(loss_type, mode, g, want):
    """docs/algorithms.md §2/§3: policy == reference gives these losses at β = 0.1, zero rewards, accuracy 0."""
    B = 4
    policy = jnp.asarray(np.random.default_rng(4).uniform(-60, -5, (B, 2)), jnp.float32)
    counts = jnp.full((B, 2), 7.0)
    eps = 0.1 if loss_type == "robust" else 0.0
    cfg = LossConfig(loss_type=(loss_type,), beta=0.1, rpo_margin_mode=mode, label_smoothing=eps)
    scores = SequenceScores(policy, counts, jnp.zeros((B, 2)))
    loss_B, sums = loss_and_metrics(scores, policy, jnp.full((B,), g, jnp.int32), cfg)
    np.testing.assert_allclose(loss_B, want, atol=1e-6)
    m = finalize_metrics(sums)
    assert m["rewards/chosen"] == m["rewards/rejected"] == m["rewards/margins"] == 0.0
    # Training keeps TRL's strict `>`: every tie is a miss (held-out accuracy counts it half: test_evaluate.py).
    assert m["rewards/accuracies"] == 0.0 and m["rewards/ties"] == 1.0
    if loss_type == "sigmoid":  # ∂loss/∂z = −β/2 at z = 0
        grad = jax.grad(lambda p: jnp.sum(per_example_loss(p, policy, counts, jnp.zeros(B, jnp.int32), cfg)))(policy)
        np.testing.assert_allclose(grad, np.tile([-0.05, 0.05], (B, 1)), atol=1e-7)


def test_iopo_metrics():
    policy, ref, counts, margin = random_inputs(5, G=4)
    cfg = LossConfig(loss_type=("iopo",), beta=0.1)
    scores = SequenceScores(jnp.asarray(policy), jnp.asarray(counts), jnp.zeros_like(jnp.asarray(counts)))
    _, sums = loss_and_metrics(scores, jnp.asarray(ref), jnp.asarray(margin), cfg)
    m = finalize_metrics(sums)
    r = 0.1 * (policy.astype(np.float64) - ref)
    np.testing.assert_allclose(m["rewards/chosen"], r[:, [0, 2]].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["rewards/rejected"], r[:, [1, 3]].mean(), rtol=1e-5)
    pairs = np.concatenate([r[:, 0] - r[:, 1], r[:, 2] - r[:, 3]])
    np.testing.assert_allclose(m["rewards/margins"], pairs.mean(), rtol=1e-5)
    assert m["rewards/accuracies"] == pytest.approx((pairs > 0).mean())
    inputs = np.concatenate([r[:, 0] - r[:, 3], r[:, 2] - r[:, 1]])
    np.testing.assert_allclose(m["iopo/margins_input"], inputs.mean(), rtol=1e-5)


# ---------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("loss_type,G", [(("rpo", "sft"), 2), (("iopo",), 4)])
def test_micro_batches_equal_one_big_batch(loss_type, G):
    B = 8
    policy, ref, counts, margin = random_inputs(6, B=B, G=G)
    logit_sums = np.random.default_rng(7).normal(size=(B, G)).astype(np.float32) * counts
    cfg = LossConfig(loss_type=loss_type, loss_weights=(1.0,) * len(loss_type) if len(loss_type) == 1 else (1.0, 0.1))

    def run(idx):
        scores = SequenceScores(jnp.asarray(policy[idx]), jnp.asarray(counts[idx]), jnp.asarray(logit_sums[idx]))
        loss_B, sums = loss_and_metrics(scores, jnp.asarray(ref[idx]), jnp.asarray(margin[idx]), cfg)
        objective = lambda p: (
            jnp.sum(per_example_loss(p, jnp.asarray(ref[idx]), jnp.asarray(counts[idx]), jnp.asarray(margin[idx]), cfg))
            / B
        )
        grad = jax.grad(objective)(jnp.asarray(policy[idx]))
        return float(jnp.sum(loss_B)) / B, sums, np.asarray(grad)

    big_loss, big_sums, big_grad = run(np.arange(B))
    acc_loss, acc_sums, acc_grad = 0.0, None, np.zeros_like(policy)
    for idx in (np.arange(0, 3), np.arange(3, 8)):  # unequal micro-batches
        loss, sums, grad = run(idx)
        acc_loss += loss
        acc_sums = sums if acc_sums is None else add_metrics(acc_sums, sums)
        acc_grad[idx] = grad
    np.testing.assert_allclose(acc_loss, big_loss, rtol=1e-6)
    np.testing.assert_allclose(acc_grad, big_grad, rtol=1e-6)
    big, acc = finalize_metrics(big_sums), finalize_metrics(acc_sums)
    assert big.keys() == acc.keys()
    for key in big:
        np.testing.assert_allclose(acc[key], big[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(big["loss"], big_loss, rtol=1e-6)
    assert big["num_tokens"] == counts.sum()


def test_combined_objective_reports_each_term():
    policy, ref, counts, margin = random_inputs(10, B=6, G=2)
    scores = SequenceScores(jnp.asarray(policy), jnp.asarray(counts), jnp.zeros_like(jnp.asarray(policy)))
    combined = LossConfig(loss_type=("rpo", "sft"), loss_weights=(1.0, 0.2))
    _, sums = loss_and_metrics(scores, jnp.asarray(ref), jnp.asarray(margin), combined)
    got = finalize_metrics(sums)
    for name in ("rpo", "sft"):
        alone = LossConfig(loss_type=(name,), loss_weights=(1.0,))
        _, single = loss_and_metrics(scores, jnp.asarray(ref), jnp.asarray(margin), alone)
        single = finalize_metrics(single)
        assert "loss/" + name not in single  # only combined objectives split their loss
        np.testing.assert_allclose(got["loss/" + name], single["loss"], rtol=1e-6)
    np.testing.assert_allclose(got["loss"], got["loss/rpo"] + 0.2 * got["loss/sft"], rtol=1e-6)


@pytest.mark.parametrize("loss_type,G", [(("rpo", "sft"), 2), (("iopo",), 4)])
def test_weight_zero_rows_leave_metrics_unchanged(loss_type, G):
    # Evaluation completes its last batch with weight-0 copies of real rows: metrics must equal the real rows' alone.
    B = 6
    policy, ref, counts, margin = random_inputs(8, B=B, G=G)
    logit_sums = np.random.default_rng(9).normal(size=(B, G)).astype(np.float32) * counts
    cfg = LossConfig(loss_type=loss_type, loss_weights=(1.0,) * len(loss_type))

    def metrics(idx, weight=None):
        scores = SequenceScores(jnp.asarray(policy[idx]), jnp.asarray(counts[idx]), jnp.asarray(logit_sums[idx]))
        _, sums = loss_and_metrics(
            scores,
            jnp.asarray(ref[idx]),
            jnp.asarray(margin[idx]),
            cfg,
            None if weight is None else jnp.asarray(weight, jnp.float32),
        )
        return finalize_metrics(sums)

    real = metrics(np.arange(4))
    padded = metrics(np.array([0, 1, 2, 3, 0, 1]), [1, 1, 1, 1, 0, 0])
    unweighted = metrics(np.array([0, 1, 2, 3, 0, 1]))
    assert real.keys() == padded.keys()
    for key in real:
        np.testing.assert_allclose(padded[key], real[key], rtol=1e-6, err_msg=key)
    assert unweighted["loss"] != pytest.approx(real["loss"])  # the duplicates would bias it without the weights


# ---------------------------------------------------------------- registry


def test_registry_and_reference_needs():
    assert set(LOSSES) == {
        "sigmoid",
        "rpo",
        "iopo",
        "iopo_no_input",
        "iopo_no_output",
        "ipo",
        "hinge",
        "robust",
        "sigmoid_norm",
        "simpo",
        "sft",
    }
    assert needs_reference(LossConfig(loss_type=("sigmoid",)))
    assert not needs_reference(LossConfig(loss_type=("simpo", "sft"), loss_weights=(1.0, 1.0)))
    with pytest.raises(ValueError, match="needs ref_logps"):
        per_example_loss(jnp.zeros((2, 2)), None, jnp.ones((2, 2)), jnp.zeros(2, jnp.int32), LossConfig())
