"""Preference losses over per-sequence log-probs, and their metrics (docs/algorithms.md §2 and §4).

Every loss is a pure function `(policy_logps [B,G], ref_logps [B,G], counts [B,G], margin [B], LossConfig) -> [B]`
in fp32. Notation: h = policy − reference (the implicit reward / β), z the preference logit. G=2 rows are
(chosen, rejected); G=4 (IOPO) rows are (x1,y1), (x1,y2), (x2,y2), (x2,y1), even index = chosen.

Combining losses: `loss_type=[a, b]`, `loss_weights=[wa, wb]` gives per-example loss wa·ℓa + wb·ℓb. TRL 1.16
(`DPOTrainer._compute_loss`) adds `per_sequence_loss.mean() * loss_weight` per type, which is the same number
because the mean is linear. (TRL's `sft` term alone is a batch token-mean; ours is a per-sequence mean, so it is a
per-example quantity — see `sft_loss`.)

Global batch and gradient accumulation: the objective is the mean of the per-example losses over the global batch.
With `k` micro-batches, differentiate `per_example.sum() / global_batch_size` on each and add the gradients: the sum
over micro-batches equals the big-batch mean exactly (up to float summation order), whatever the split.
Metrics come as `(weighted sum, denominator)` pairs: add them over micro-batches (and XLA sums them over the mesh
inside `jit`), then `finalize_metrics` divides once, so every metric equals its big-batch value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from rpo_jax.config.schema import LossConfig
from rpo_jax.objective.logps import SequenceScores

Array = jax.Array


def _pair_logit(policy_logps, ref_logps):
    h = policy_logps - ref_logps
    return h[:, 0] - h[:, 1]


def _normalised_pair_logit(policy_logps, ref_logps, counts):
    h_mean = (policy_logps - ref_logps) / counts
    return h_mean[:, 0] - h_mean[:, 1]


def sigmoid_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """DPO (arXiv 2305.18290, Eq. 7): −logσ(βz), z = h0 − h1.

    With `label_smoothing` ε > 0 this is cDPO as TRL ≤ 0.28's `sigmoid`: −(1−ε)logσ(βz) − ε·logσ(−βz).
    (TRL 1.16's `sigmoid` ignores `label_smoothing`; the golden test records that.)
    """
    z = _pair_logit(policy_logps, ref_logps)
    eps = cfg.label_smoothing
    return -(1.0 - eps) * jax.nn.log_sigmoid(cfg.beta * z) - eps * jax.nn.log_sigmoid(-cfg.beta * z)


def rpo_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """RPO (arXiv 2505.22172; official `margin_dpo_loss`) with margin γ·g, g = number of differing constraints.

    `inside` (official `margin_dpo_loss`): −logσ(β(z − γg)); `outside` (README form): −logσ(βz − γg).
    """
    z = _pair_logit(policy_logps, ref_logps)
    gamma_g = cfg.rpo_gamma * margin.astype(jnp.float32)
    if cfg.rpo_margin_mode == "inside":
        return -jax.nn.log_sigmoid(cfg.beta * (z - gamma_g))
    return -jax.nn.log_sigmoid(cfg.beta * z - gamma_g)


def iopo_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """IOPO (arXiv 2411.06208, Eq. 9–10): −logσ(βz), z = ½[(2h0−h1−h3) + (2h2−h3−h1)] = h0 + h2 − h1 − h3."""
    h = policy_logps - ref_logps
    z = h[:, 0] + h[:, 2] - h[:, 1] - h[:, 3]
    return -jax.nn.log_sigmoid(cfg.beta * z)


def iopo_no_input_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """IOPO ablation "w/o input preference" (arXiv 2411.06208, Table 4): only the output preferences, each prompt's
    chosen response over its rejected one, ½[ℓ(h0 − h1) + ℓ(h2 − h3)] with ℓ(z) = −logσ(βz).

    Deleting the input bracket inside IOPO's single sigmoid would not ablate anything (both brackets sum to the
    same z, docs/algorithms.md §2), so each preference gets its own link, as the ablation intends.
    """
    h = policy_logps - ref_logps
    return 0.5 * (
        -jax.nn.log_sigmoid(cfg.beta * (h[:, 0] - h[:, 1])) - jax.nn.log_sigmoid(cfg.beta * (h[:, 2] - h[:, 3]))
    )


def iopo_no_output_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """IOPO ablation "w/o output preference" (arXiv 2411.06208, Table 4): only the input preferences, each response
    under its own prompt over the other prompt, ½[ℓ(h0 − h3) + ℓ(h2 − h1)] with ℓ(z) = −logσ(βz)."""
    h = policy_logps - ref_logps
    return 0.5 * (
        -jax.nn.log_sigmoid(cfg.beta * (h[:, 0] - h[:, 3])) - jax.nn.log_sigmoid(cfg.beta * (h[:, 2] - h[:, 1]))
    )


def ipo_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """IPO (arXiv 2310.12036, Eq. 17), length-normalised as TRL: (z̄ − 1/(2β))², z̄ = h0/n0 − h1/n1."""
    z_mean = _normalised_pair_logit(policy_logps, ref_logps, counts)
    return (z_mean - 1.0 / (2.0 * cfg.beta)) ** 2


def hinge_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """SLiC hinge (arXiv 2305.10425, as TRL `hinge`): relu(1 − βz)."""
    return jax.nn.relu(1.0 - cfg.beta * _pair_logit(policy_logps, ref_logps))


def robust_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """Robust DPO (arXiv 2403.00409, as TRL `robust`): [−(1−ε)logσ(βz) + ε·logσ(−βz)] / (1 − 2ε)."""
    z = _pair_logit(policy_logps, ref_logps)
    eps = cfg.label_smoothing
    clean = -(1.0 - eps) * jax.nn.log_sigmoid(cfg.beta * z)
    flipped = -eps * jax.nn.log_sigmoid(-cfg.beta * z)
    return (clean - flipped) / (1.0 - 2.0 * eps)


def sigmoid_norm_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """Length-normalised DPO (TRL `sigmoid_norm`): −logσ(βz̄), z̄ = h0/n0 − h1/n1."""
    return -jax.nn.log_sigmoid(cfg.beta * _normalised_pair_logit(policy_logps, ref_logps, counts))


def simpo_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """SimPO (arXiv 2405.14734; TRL CPO `simpo`, `cpo_alpha=0`): −logσ(β(pi0/n0 − pi1/n1) − γ_s).

    Reference-free: `ref_logps` is unused.
    """
    avg = policy_logps / counts
    return -jax.nn.log_sigmoid(cfg.beta * (avg[:, 0] - avg[:, 1]) - cfg.simpo_gamma)


def sft_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """NLL of the chosen response(s), per-sequence token mean (LLaMA-Factory `pref_ftx`): −pi0/n0; IOPO
    (G=4) −pi0/n0 − pi2/n2. TRL's `sft` is instead one token mean over the whole batch (our `nll` metric)."""
    nll = -policy_logps[:, 0::2] / counts[:, 0::2]
    return jnp.sum(nll, axis=1)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., Array]
    group_size: int | None  # required G, or None for any even G
    needs_reference: bool


LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(sigmoid_loss, 2, True),
    "rpo": LossSpec(rpo_loss, 2, True),
    "iopo": LossSpec(iopo_loss, 4, True),
    "iopo_no_input": LossSpec(iopo_no_input_loss, 4, True),
    "iopo_no_output": LossSpec(iopo_no_output_loss, 4, True),
    "ipo": LossSpec(ipo_loss, 2, True),
    "hinge": LossSpec(hinge_loss, 2, True),
    "robust": LossSpec(robust_loss, 2, True),
    "sigmoid_norm": LossSpec(sigmoid_norm_loss, 2, True),
    "simpo": LossSpec(simpo_loss, 2, False),
    "sft": LossSpec(sft_loss, None, False),
}


def needs_reference(cfg: LossConfig) -> bool:
    """Whether any selected loss uses reference log-probs (SimPO and SFT do not)."""
    return any(LOSSES[name].needs_reference for name in cfg.loss_type)


def per_example_terms(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> dict[str, Array]:
    """Each selected loss, unweighted, shape [B]; `ref_logps=None` only when no selected loss needs a reference."""
    if ref_logps is None:
        if needs_reference(cfg):
            raise ValueError(f"loss.loss_type {list(cfg.loss_type)} needs ref_logps")
        ref_logps = jnp.zeros_like(policy_logps)
    return {name: LOSSES[name].fn(policy_logps, ref_logps, counts, margin, cfg) for name in cfg.loss_type}


def weighted_total(terms: Mapping[str, Array], cfg: LossConfig) -> Array:
    """Σ_k w_k · loss_k."""
    return sum(weight * terms[name] for name, weight in zip(cfg.loss_type, cfg.loss_weights, strict=True))


def per_example_loss(policy_logps, ref_logps, counts, margin, cfg: LossConfig) -> Array:
    """Σ_k w_k · loss_k, shape [B]; `ref_logps=None` only when no selected loss needs a reference."""
    return weighted_total(per_example_terms(policy_logps, ref_logps, counts, margin, cfg), cfg)


# Metrics finalised as a plain total rather than a mean (their denominator is informational only).
TOTAL_METRICS = frozenset({"num_tokens"})


def _weighted_sum(values: Array, weight_B: Array) -> Array:
    return jnp.sum(values * weight_B.reshape(weight_B.shape + (1,) * (values.ndim - 1)))


def _mean(values: Array, weight_B: Array) -> tuple[Array, Array]:
    return _weighted_sum(values, weight_B), _weighted_sum(jnp.ones_like(values), weight_B)


def loss_and_metrics(
    policy: SequenceScores, ref_logps: Array | None, margin: Array, cfg: LossConfig, weight_B: Array | None = None
) -> tuple[Array, dict[str, tuple[Array, Array]]]:
    """Per-example loss [B] and TRL-named metrics as `(sum, denominator)` pairs (see module docstring).

    Rewards are β·h; with no reference (SimPO/SFT only) h is the policy log-prob itself. `weight_B` (1 or 0 per
    example; default all 1) weights the metrics: evaluation completes its last batch with weight-0 rows.
    """
    logps = policy.logps.astype(jnp.float32)
    counts = policy.counts.astype(jnp.float32)
    ref = jnp.zeros_like(logps) if ref_logps is None else jax.lax.stop_gradient(ref_logps.astype(jnp.float32))
    terms = per_example_terms(logps, None if ref_logps is None else ref, counts, margin, cfg)
    loss_B = weighted_total(terms, cfg)
    w = jnp.ones(logps.shape[:1], jnp.float32) if weight_B is None else weight_B.astype(jnp.float32)

    rewards = cfg.beta * jax.lax.stop_gradient(logps - ref)
    logps_sg = jax.lax.stop_gradient(logps)
    chosen, rejected = slice(0, None, 2), slice(1, None, 2)  # G=2: (0),(1); G=4: (0,2),(1,3) -> pairs (0,1),(2,3)
    margins = rewards[:, chosen] - rewards[:, rejected]
    chosen_counts = counts[:, chosen]
    metrics = {
        "loss": _mean(jax.lax.stop_gradient(loss_B), w),
        "rewards/chosen": _mean(rewards[:, chosen], w),
        "rewards/rejected": _mean(rewards[:, rejected], w),
        "rewards/margins": _mean(margins, w),
        "rewards/accuracies": _mean((margins > 0).astype(jnp.float32), w),  # strict: ties (step 0) count as misses
        # Exact ties (policy == reference): held-out accuracy counts each as half right (train.evaluation).
        "rewards/ties": _mean((margins == 0).astype(jnp.float32), w),
        "logps/chosen": _mean(logps_sg[:, chosen], w),
        "logps/rejected": _mean(logps_sg[:, rejected], w),
        # Token-weighted as TRL: Σ of per-token vocab-mean logits over all chosen tokens / number of those tokens.
        "logits/chosen": (_weighted_sum(policy.mean_logit_sums[:, chosen], w), _weighted_sum(chosen_counts, w)),
        "logits/rejected": (
            _weighted_sum(policy.mean_logit_sums[:, rejected], w),
            _weighted_sum(counts[:, rejected], w),
        ),
        # Token-mean NLL of the chosen responses (= TRL's `sft` loss term).
        "nll": (-_weighted_sum(logps_sg[:, chosen], w), _weighted_sum(chosen_counts, w)),
        "num_tokens": (_weighted_sum(counts, w), _weighted_sum(jnp.ones_like(counts), w)),
    }
    if len(terms) > 1:  # a combined objective (e.g. rpo + sft): each term alone, unweighted, to tell them apart
        metrics.update({f"loss/{name}": _mean(jax.lax.stop_gradient(term), w) for name, term in terms.items()})
    if "rpo" in cfg.loss_type:
        metrics["rpo/g_mean"] = _mean(margin.astype(jnp.float32), w)
    if logps.shape[1] == 4:
        h = rewards
        metrics["iopo/margins_input"] = _mean(jnp.stack([h[:, 0] - h[:, 3], h[:, 2] - h[:, 1]], axis=1), w)
        metrics["iopo/z_acc"] = _mean((h[:, 0] + h[:, 2] - h[:, 1] - h[:, 3] > 0).astype(jnp.float32), w)
    return loss_B, metrics


def add_metrics(a: Mapping[str, tuple], b: Mapping[str, tuple]) -> dict[str, tuple]:
    """Accumulates two micro-batches' metric pairs."""
    if a.keys() != b.keys():
        raise ValueError(f"metric keys differ: {sorted(a)} vs {sorted(b)}")
    return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1]) for k in a}


def finalize_metrics(sums: Mapping[str, tuple]) -> dict[str, float]:
    """Divides each accumulated sum by its denominator (totals in `TOTAL_METRICS` are reported as sums)."""
    out = {}
    for name, (total, denom) in sums.items():
        out[name] = float(total) if name in TOTAL_METRICS else float(total) / float(denom)
    return out
