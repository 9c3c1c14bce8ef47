"""Preference metrics on held-out pairs: one pass over a tokenized pair folder, every example counted once.

`pair_metrics` is the loop the trainer runs at each evaluation; `evaluate_pairs` scores a policy checkpoint
against a reference checkpoint with a run config's loss settings (`rpo-jax eval --suite pairs`). Either
checkpoint may be a params checkpoint or an HF Llama folder such as a run's `hf/` export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipeline.records.shards import read_manifest
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.objective.losses import finalize_metrics
from rpo_jax.train.batches import model_inputs, open_loader, to_global


def pair_metrics(
    eval_step: Callable, params, frozen, reference, batches: Iterable[dict], cfg: Config, mesh: Mesh
) -> dict[str, float]:
    """Metrics over every batch (weighted by example_weight, so the fill rows of the last batch count 0), plus
    `num_pairs`, the number of examples scored.

    `rewards/accuracies` here counts a tie (margin exactly 0) as half right, so a model that cannot tell chosen
    from rejected scores chance, 0.5: at step 0 policy == reference makes every margin 0, and TRL's strict `>`,
    which the training metric keeps for parity with TRL, would read 0.0 there. `rewards/ties` is the tie share.
    """
    sums = None
    for local in batches:
        batch = to_global(model_inputs(local, cfg, weighted=True), mesh)
        out = jax.device_get(eval_step(params, frozen, reference, batch))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    if sums is None:
        raise ConfigError(f"data.eval_path={cfg.data.eval_path}: no eval batch (empty dataset)")
    metrics = finalize_metrics(sums)
    metrics["rewards/accuracies"] += 0.5 * metrics["rewards/ties"]  # both are shares of the same weighted pairs
    return metrics | {"num_pairs": float(sums["loss"][1])}


def evaluate_pairs(
    cfg: Config, checkpoint: str, reference: str | None, pairs_dir: str, batch_size: int
) -> dict[str, float]:
    """`checkpoint` against `reference` (None: reference-free losses only) on `pairs_dir`, with `cfg`'s loss and
    execution settings. The checkpoint fixes the architecture; LoRA and init_checkpoint settings are ignored."""
    from rpo_jax.io.params import checkpoint_model_config
    from rpo_jax.runtime.sharding import data_parallel_size, make_mesh
    from rpo_jax.train.policy import build_policy
    from rpo_jax.train.step import make_eval_step

    mesh = make_mesh(cfg.mesh)
    data_ways = data_parallel_size(mesh)
    max_length = read_manifest(pairs_dir)["max_length"]
    cfg = dataclasses.replace(
        cfg,
        model=checkpoint_model_config(checkpoint),
        lora=dataclasses.replace(cfg.lora, rank=0),
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
    return pair_metrics(
        make_eval_step(cfg, policy, mesh), policy.trainable, policy.frozen, policy.reference, batches, cfg, mesh
    )
