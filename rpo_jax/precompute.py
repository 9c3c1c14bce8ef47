"""Precomputed reference log-probs (algorithms.md §3, mode `precomputed`): one reference pass over a dataset.

The reference runs exactly as inside the train step (same model config, dtype, chunked scoring, mesh) and the
result [num_examples, G] is attached to the shard folder with a key naming everything it depends on, so a
training run with `train.reference_mode=precomputed` never loads reference weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import numpy as np

from data_pipeline.loader import dataset_fingerprint, make_loader
from data_pipeline.shards import attach_ref_logps, read_manifest, read_ref_logps
from rpo_jax.config import Config, config_to_dict
from rpo_jax.logps import paired_logps
from rpo_jax.policy import build_policy
from rpo_jax.sharding import make_mesh
from rpo_jax.train_step import batch_shardings

MODEL_INPUTS = ("tokens", "loss_mask", "segment_ids", "positions")


def reference_key(cfg: Config, shard_dir: str) -> str:
    """Hash of data (fingerprint covers pairs, tokenizer, template, max length), reference weights and dtype."""
    reference = cfg.train.init_checkpoint or f"seed:{cfg.train.seed}"
    payload = {"data": dataset_fingerprint(shard_dir), "reference": reference, "model": config_to_dict(cfg.model),
               "chunks": [cfg.loss.logits_chunk_size, cfg.loss.vocab_chunk_size]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def precompute_reference_logps(cfg: Config, shard_dir: str, batch_size: int = 0) -> tuple[np.ndarray, str]:
    """Scores every example of `shard_dir` with the reference (init checkpoint, LoRA off); attaches and returns."""
    mesh = make_mesh(cfg.mesh)
    # The reference is the policy's starting point: the base weights, with LoRA adapters (if any) skipped.
    policy = build_policy(_reference_only(cfg), mesh, cfg.train.init_checkpoint)
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = batch_size or cfg.data.global_batch_size
    batch_size = -(-batch_size // data_ways) * data_ways
    manifest = read_manifest(shard_dir)
    num_examples, group = manifest["num_examples"], manifest["group_size"]
    out = np.full((num_examples, group), np.nan, np.float32)

    @jax.jit
    def score(params, batch):
        model = policy.merged_model(params, policy.frozen)
        return paired_logps(model, batch, logits_chunk_size=cfg.loss.logits_chunk_size,
                            vocab_chunk_size=cfg.loss.vocab_chunk_size, use_lora=False, mesh=mesh).logps

    loader = make_loader(shard_dir, batch_size=batch_size, seed=0, num_epochs=1, remainder="keep",
                         length_buckets=cfg.data.length_buckets, max_length=cfg.data.max_length)
    for batch in loader:
        index = batch["example_index"]
        real = len(index)
        # The last batch is padded by repeating its first row so every batch keeps a mesh-divisible shape.
        inputs = {k: np.concatenate([batch[k], np.repeat(batch[k][:1], batch_size - real, axis=0)])
                  for k in MODEL_INPUTS}
        sh = batch_shardings(inputs, mesh)
        logps = jax.device_get(score(policy.trainable, {k: jax.device_put(v, sh[k]) for k, v in inputs.items()}))
        out[index] = np.asarray(logps)[:real]
    if np.isnan(out).any():
        raise RuntimeError(f"{shard_dir}: {int(np.isnan(out).any(axis=1).sum())} examples were not scored")
    key = reference_key(cfg, shard_dir)
    if jax.process_index() == 0:
        attach_ref_logps(shard_dir, out, key)
    return out, key


def attached_key(shard_dir: str) -> str | None:
    attached = read_ref_logps(shard_dir)
    return None if attached is None else attached[1]


def _reference_only(cfg: Config) -> Config:
    """Builds just the reference weights: the base model (LoRA off, so no adapters), no separate copy."""
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, rank=0),
                               train=dataclasses.replace(cfg.train, reference_mode="precomputed"))
