"""Preference metrics on held-out pairs: one pass over a tokenized pair folder, every example counted once.

`pair_metrics` is the loop the trainer runs at each evaluation; `evaluate_pairs` scores a policy checkpoint
against a reference checkpoint with a run config's loss settings (`rpo-jax eval --suite pairs`), and
`score_pair_rows` returns the implicit reward of every row instead (the experiments rank responses by it). Either
checkpoint may be a params checkpoint or an HF Llama folder such as a run's `hf/` export. On mirrored RPO pairs
the metrics include the mirror-unit ones (`mirror/*`, `rpo_jax.train.mirror_metrics`): the instruction-reading
measure, since pair-level accuracy there is 0.5 for any model that ignores the instruction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipeline.records.shards import read_manifest
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.objective.losses import finalize_metrics, loss_and_metrics
from rpo_jax.objective.packed_logps import sequence_logps
from rpo_jax.runtime.compilation_cache import default_cache_dir, enable_compilation_cache
from rpo_jax.train.batches import model_inputs, open_loader, to_global
from rpo_jax.train.mirror_metrics import mirror_unit_metrics
from rpo_jax.train.policy import PolicyParams
from rpo_jax.train.step import make_objective


def make_eval_step(cfg: Config, policy: PolicyParams, mesh: Mesh) -> Callable:
    """eval(trainable, frozen, reference, batch) -> (metric sums, rewards [B, G]): one forward of the policy and
    of the reference, no gradient, no dropout. Rewards are each row's implicit reward β·(policy − reference)
    log-prob (the policy log-prob with no reference). Evaluation batches are never packed."""
    reference_logps, _ = make_objective(cfg, policy, mesh)
    chunks = dict(logits_chunk_size=cfg.loss.logits_chunk_size, vocab_chunk_size=cfg.loss.vocab_chunk_size, mesh=mesh)

    def evaluate(trainable, frozen, reference, batch):
        ref_logps_BG = reference_logps(trainable, frozen, reference, batch)
        scores = sequence_logps(policy.merged_model(trainable, frozen), batch, use_lora=True, **chunks)
        _, sums = loss_and_metrics(scores, ref_logps_BG, batch["margin"], cfg.loss, batch["example_weight"])
        logps = scores.logps.astype(jnp.float32)
        return sums, cfg.loss.beta * (logps if ref_logps_BG is None else logps - ref_logps_BG)

    return jax.jit(evaluate, out_shardings=NamedSharding(mesh, PartitionSpec()))


def scored_rows(
    eval_step: Callable, params, frozen, reference, batches: Iterable[dict], cfg: Config, mesh: Mesh
) -> tuple[dict, np.ndarray]:
    """(metric sums over every batch, rewards [num_examples, G] by example index). Fill rows of the last batch
    weigh 0 in the sums and are not stored."""
    sums, rows = None, {}
    for local in batches:
        batch = to_global(model_inputs(local, cfg, weighted=True), mesh)
        out, rewards = jax.device_get(eval_step(params, frozen, reference, batch))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
        index, weight = (np.asarray(local[k]) for k in ("example_index", "example_weight"))
        if jax.process_count() > 1:  # the global rows are the processes' local rows in process order
            index, weight = (multihost_utils.process_allgather(a, tiled=True) for a in (index, weight))
        rows.update({int(i): r for i, w, r in zip(index, weight, np.asarray(rewards), strict=True) if w > 0})
    if sums is None:
        raise ConfigError(f"data.eval_path={cfg.data.eval_path}: no eval batch (empty dataset)")
    return sums, np.stack([rows[i] for i in range(len(rows))])


def pair_metrics(
    eval_step: Callable, params, frozen, reference, batches: Iterable[dict], cfg: Config, mesh: Mesh
) -> dict[str, float]:
    """Metrics over every batch (weighted by example_weight, so the fill rows of the last batch count 0), plus
    `num_pairs`, the number of examples scored, and on mirrored pairs the mirror-unit metrics.

    `rewards/accuracies` here counts a tie (margin exactly 0) as half right, so a model that cannot tell chosen
    from rejected scores chance, 0.5: at step 0 policy == reference makes every margin 0, and TRL's strict `>`,
    which the training metric keeps for parity with TRL, would read 0.0 there. `rewards/ties` is the tie share.
    """
    sums, rewards = scored_rows(eval_step, params, frozen, reference, batches, cfg, mesh)
    metrics = finalize_metrics(sums)
    metrics["rewards/accuracies"] += 0.5 * metrics["rewards/ties"]  # both are shares of the same weighted pairs
    if rewards.shape[1] == 2:  # mirrors exist between pairs only (an IOPO group holds its own)
        units = read_manifest(cfg.data.eval_path).get("mirror_pairs", [])
        metrics |= mirror_unit_metrics(rewards[:, 0] - rewards[:, 1], units)
    return metrics | {"num_pairs": float(sums["loss"][1])}


def _checkpoint_scoring(cfg: Config, checkpoint: str, reference: str | None, pairs_dir: str, batch_size: int):
    """(eval step, trainable, frozen, reference params, batches, cfg, mesh) for `checkpoint` against `reference`
    on `pairs_dir`."""
    from rpo_jax.io.params import checkpoint_model_config
    from rpo_jax.runtime.sharding import data_parallel_size, make_mesh
    from rpo_jax.train.policy import build_policy

    # The scoring programs belong in the shared cache, compiled once across evaluations; a process that trained
    # first (the mechanism experiment) still has the cache at that run's folder, which its stage may have renamed.
    enable_compilation_cache(default_cache_dir())
    mesh = make_mesh(cfg.mesh)
    data_ways = data_parallel_size(mesh)
    max_length = read_manifest(pairs_dir)["max_length"]
    cfg = dataclasses.replace(
        cfg,
        model=checkpoint_model_config(checkpoint),
        lora=dataclasses.replace(cfg.lora, rank=0, base_quantization="none"),
        train=dataclasses.replace(cfg.train, init_checkpoint="", reference_mode="separate" if reference else "none"),
        data=dataclasses.replace(
            cfg.data,
            eval_path=pairs_dir,
            max_length=max_length,
            length_buckets=tuple(b for b in cfg.data.length_buckets if b <= max_length),
            global_batch_size=max(data_ways, batch_size // data_ways * data_ways),
        ),
    )
    policy = build_policy(cfg, mesh, checkpoint)
    if reference:
        policy = dataclasses.replace(policy, reference=build_policy(cfg, mesh, reference).trainable)
    batches = open_loader(cfg, pairs_dir, cfg.data.global_batch_size // jax.process_count(), repeat=False)
    step = make_eval_step(cfg, policy, mesh)
    return step, policy.trainable, policy.frozen, policy.reference, batches, cfg, mesh


def evaluate_pairs(
    cfg: Config, checkpoint: str, reference: str | None, pairs_dir: str, batch_size: int
) -> dict[str, float]:
    """`checkpoint` against `reference` (None: reference-free losses only) on `pairs_dir`, with `cfg`'s loss and
    execution settings. The checkpoint fixes the architecture; LoRA and init_checkpoint settings are ignored."""
    return pair_metrics(*_checkpoint_scoring(cfg, checkpoint, reference, pairs_dir, batch_size))


def score_pair_rows(cfg: Config, checkpoint: str, reference: str | None, pairs_dir: str, batch_size: int) -> np.ndarray:
    """The implicit reward of every row of `pairs_dir`, [num_examples, G], as `evaluate_pairs` computes them."""
    return scored_rows(*_checkpoint_scoring(cfg, checkpoint, reference, pairs_dir, batch_size))[1]
