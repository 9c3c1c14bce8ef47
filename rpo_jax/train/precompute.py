"""Precomputed reference log-probs (docs/algorithms.md §3, mode `precomputed`): one reference pass over a dataset.

The reference runs exactly as inside the train step (same model config, dtype, chunked scoring, mesh). The
result, [num_examples, G] float32 with row i = example index i, is stored in the run's own folder as
`<train.output_dir>/ref_logps/<key>.npz`, the key hashing everything it depends on (the data fingerprint, the
reference weights, the model config and the chunking), so a training run with `train.reference_mode=precomputed`
never loads reference weights, and data or reference changes are never mixed up.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from data_pipeline.files import write_bytes_atomic
from data_pipeline.records.loader import dataset_fingerprint, make_loader
from data_pipeline.records.shards import read_manifest
from data_pipeline.storage import storage_path
from rpo_jax.config.loading import config_to_dict
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.objective.logps import paired_logps
from rpo_jax.runtime.sharding import batch_shardings, data_parallel_size, make_mesh
from rpo_jax.train.batches import MODEL_FIELDS
from rpo_jax.train.policy import build_policy

REF_LOGPS_DIR = "ref_logps"


def reference_key(cfg: Config, shard_dir: str) -> str:
    """Hash of data (fingerprint covers pairs, tokenizer, template, max length), reference weights and dtype."""
    reference = cfg.train.init_checkpoint or f"seed:{cfg.train.seed}"
    payload = {
        "data": dataset_fingerprint(shard_dir),
        "reference": reference,
        "model": config_to_dict(cfg.model),
        "chunks": [cfg.loss.logits_chunk_size, cfg.loss.vocab_chunk_size],
    }
    if cfg.lora.base_quantization != "none":  # a quantized base scores differently (keys of dense runs unchanged)
        payload["base_quantization"] = [cfg.lora.base_quantization, cfg.lora.quantization_block_size]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def ref_logps_path(cfg: Config, shard_dir: str) -> Path:
    return storage_path(cfg.train.output_dir) / REF_LOGPS_DIR / f"{reference_key(cfg, shard_dir)}.npz"


def load_reference_logps(cfg: Config, shard_dir: str) -> np.ndarray | None:
    """The stored log-probs for `shard_dir` under `cfg`'s reference, or None when there are none yet."""
    path = ref_logps_path(cfg, shard_dir)
    if not path.is_file():
        return None
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:  # local or gs://
        return data["ref_logps"]


def precompute_reference_logps(cfg: Config, shard_dir: str, batch_size: int = 0) -> tuple[np.ndarray, Path]:
    """Scores every example of `shard_dir` with the reference (init checkpoint, LoRA off) and stores the result
    in the run folder; returns it and where it went."""
    mesh = make_mesh(cfg.mesh)
    # The reference is the policy's starting point: the base weights, with LoRA adapters (if any) skipped.
    policy = build_policy(_reference_only(cfg), mesh, cfg.train.init_checkpoint)
    data_ways = data_parallel_size(mesh)
    batch_size = batch_size or cfg.data.global_batch_size
    batch_size = -(-batch_size // data_ways) * data_ways
    manifest = read_manifest(shard_dir)
    out = np.full((manifest["num_examples"], manifest["group_size"]), np.nan, np.float32)

    # Replicated result: every process gets the whole [B, G] block (a few floats per row), multi-host included.
    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, PartitionSpec()))
    def score(params, batch):
        model = policy.merged_model(params, policy.frozen)
        return paired_logps(
            model,
            batch,
            logits_chunk_size=cfg.loss.logits_chunk_size,
            vocab_chunk_size=cfg.loss.vocab_chunk_size,
            use_lora=False,
            mesh=mesh,
        ).logps

    loader = make_loader(
        shard_dir,
        batch_size=batch_size,
        seed=0,
        num_epochs=1,
        remainder="keep",
        length_buckets=cfg.data.length_buckets,
        max_length=cfg.data.max_length,
    )
    for batch in loader:
        index = batch["example_index"]
        real = len(index)
        # The last batch is padded by repeating its first row so every batch keeps a mesh-divisible shape.
        inputs = {
            k: np.concatenate([batch[k], np.repeat(batch[k][:1], batch_size - real, axis=0)]) for k in MODEL_FIELDS
        }
        sh = batch_shardings(inputs, mesh)  # every process loads the whole batch and places its own part
        logps = score(policy.trainable, {k: jax.device_put(v, sh[k]) for k, v in inputs.items()})
        out[index] = np.asarray(logps.addressable_data(0))[:real]
    if np.isnan(out).any():
        raise RuntimeError(f"{shard_dir}: {int(np.isnan(out).any(axis=1).sum())} examples were not scored")
    path = ref_logps_path(cfg, shard_dir)
    if jax.process_index() == 0:
        buffer = io.BytesIO()
        np.savez(buffer, ref_logps=out)
        write_bytes_atomic(path, buffer.getvalue())
    return out, path


def _reference_only(cfg: Config) -> Config:
    """Builds just the reference weights: the base model (LoRA off, so no adapters), no separate copy."""
    return dataclasses.replace(
        cfg,
        # A quantized (QLoRA) base keeps its adapters' config: the reference is that quantized base, LoRA off.
        lora=cfg.lora if cfg.lora.base_quantization != "none" else dataclasses.replace(cfg.lora, rank=0),
        train=dataclasses.replace(cfg.train, reference_mode="precomputed"),
    )


def ensure_reference_logps(cfg: Config) -> dict[str, np.ndarray]:
    """Precomputed mode: data path -> its reference log-probs (train and eval), computed once per key and reused
    by later runs and resumes in the same output folder."""
    from jax.experimental import multihost_utils

    found = {}
    for path in (cfg.data.train_path, cfg.data.eval_path):
        if not path:
            continue
        logps = load_reference_logps(cfg, path)
        if jax.process_count() > 1:  # process 0 decides, so either every process computes (together) or none
            stored = bool(multihost_utils.broadcast_one_to_all(np.int32(logps is not None)))
            if stored and logps is None:
                raise ConfigError(
                    f"{ref_logps_path(cfg, path)}: process 0 reads it, process {jax.process_index()} does not: "
                    "train.output_dir must be one folder that every host shares"
                )
            logps = logps if stored else None
        if logps is None:
            logps, _ = precompute_reference_logps(cfg, path)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"rpo_jax_ref_logps:{path}")
        found[path] = logps
    return found
