"""From the loader's numpy batches to the step's inputs: batch sizes per process, loaders, validated fields,
global arrays on the mesh. The trainer, evaluation and the reference pre-pass all go through here."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipeline.records.loader import PairBatchIterator, make_loader
from data_pipeline.records.mixture import MixtureSource
from data_pipeline.records.mixture_loader import make_mixture_loader
from data_pipeline.records.packed_loader import make_packed_loader
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.model.attention import platform_of, resolve_attention, shared_prompt_attention
from rpo_jax.objective.packed_logps import PACKED_MODEL_FIELDS
from rpo_jax.runtime.sharding import batch_shardings, data_parallel_size
from rpo_jax.train.batch_checks import validate_batch, validate_packed_batch

MODEL_FIELDS = ("tokens", "loss_mask", "segment_ids", "positions")


def check_batch_split(
    global_batch: int, grad_accum_steps: int, mesh: Mesh, *, setting: str = "data.global_batch_size"
) -> None:
    """The global batch must split into `grad_accum_steps` micro-batches, each divisible over the mesh."""
    data_ways = data_parallel_size(mesh)
    if global_batch % grad_accum_steps or (global_batch // grad_accum_steps) % data_ways:
        raise ConfigError(
            f"{setting}={global_batch} must split into train.grad_accum_steps={grad_accum_steps} micro-batches "
            f"each divisible by the data-parallel ways (mesh data×fsdp = {data_ways})"
        )


def per_process_batch_size(cfg: Config, mesh: Mesh) -> int:
    """Checks that the global batch splits into micro-batches over the mesh and the processes; returns the
    groups each process loads per step."""
    check_batch_split(cfg.data.global_batch_size, cfg.train.grad_accum_steps, mesh)
    if cfg.data.group_mirrors and cfg.data.packing == "none" and cfg.data.global_batch_size % 2:
        raise ConfigError(
            f"data.group_mirrors puts each pair and its mirror in one step: data.global_batch_size="
            f"{cfg.data.global_batch_size} must be even"
        )
    if cfg.data.global_batch_size % jax.process_count():
        raise ConfigError(
            f"data.global_batch_size={cfg.data.global_batch_size} does not divide over {jax.process_count()} processes"
        )
    check_packing_settings(cfg, mesh)
    return cfg.data.global_batch_size // jax.process_count()


def check_packing_settings(cfg: Config, mesh: Mesh) -> None:
    """Packed rows are G x max_length tokens, so length buckets have nothing to do; shared-prompt rows need a mask
    cudnn and splash cannot express: an explicit choice of either raises now (not at trace time), `auto` runs
    blockwise for them instead (`model.Llama`)."""
    if cfg.data.packing != "none" and cfg.data.length_buckets:
        raise ConfigError(f"data.length_buckets must be [] with data.packing={cfg.data.packing} (rows are not padded)")
    if cfg.data.packing == "packed_shared_prompt" and cfg.model.attention != "auto":
        impl, _ = resolve_attention(cfg.model, platform_of(mesh))
        if shared_prompt_attention(impl):
            raise ConfigError(shared_prompt_attention(impl))


def open_loader(
    cfg: Config, path: str, per_process_batch: int, *, repeat: bool, ref_logps: np.ndarray | None = None
) -> PairBatchIterator:
    """This process's batches of `path`. Training (`repeat`) drops the last partial batch of an epoch (it is seen
    in the next, reshuffled one); a single pass completes it with weight-0 rows so every example counts once.
    With `data.packing`, training batches are `per_process_batch` packed rows (`packed_loader`); a single pass
    (evaluation) stays unpacked."""
    if repeat and cfg.data.packing != "none":
        return make_packed_loader(
            path,
            rows_per_batch=per_process_batch,
            seed=cfg.data.shuffle_seed,
            shared_prompt=cfg.data.packing == "packed_shared_prompt",
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            max_length=cfg.data.max_length,
            num_workers=cfg.data.num_workers,
            ref_logps=ref_logps,
            group_mirrors=cfg.data.group_mirrors,
        )
    return make_loader(
        path,
        batch_size=per_process_batch,
        seed=cfg.data.shuffle_seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        num_epochs=None if repeat else 1,
        length_buckets=cfg.data.length_buckets,
        max_length=cfg.data.max_length,
        num_workers=cfg.data.num_workers,
        remainder="drop" if repeat else "fill",
        ref_logps=ref_logps,
        group_mirrors=cfg.data.group_mirrors and repeat,
    )


def open_train_loader(cfg: Config, per_process_batch: int, ref_logps: np.ndarray | None = None) -> PairBatchIterator:
    """This process's training batches, repeated forever: of `data.train_path`, or of the weighted mixture
    `data.sources` (whose batches carry the same fields; `data_pipeline.records.mixture`)."""
    if not cfg.data.sources:
        return open_loader(cfg, cfg.data.train_path, per_process_batch, repeat=True, ref_logps=ref_logps)
    return make_mixture_loader(
        mixture_sources(cfg),
        batch_size=per_process_batch,
        seed=cfg.data.shuffle_seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        length_buckets=cfg.data.length_buckets,
        max_length=cfg.data.max_length,
        packing=cfg.data.packing,
        group_mirrors=cfg.data.group_mirrors,
        num_workers=cfg.data.num_workers,
    )


def mixture_sources(cfg: Config) -> list[MixtureSource]:
    """`data.sources` (shard folders once `prepare_run_data` tokenized the pair files), each named by its setting."""
    return [MixtureSource(s.path, s.weight, f"data.sources[{k}]") for k, s in enumerate(cfg.data.sources)]


def train_data_dir(cfg: Config) -> str:
    """The folder whose manifest describes how the training data was tokenized (tokenizer, chat template):
    `data.train_path`, or a mixture's first source (a mixture's sources share both, `mixture`)."""
    return cfg.data.sources[0].path if cfg.data.sources else cfg.data.train_path


def model_inputs(batch: dict, cfg: Config, *, weighted: bool = False) -> dict:
    """The fields the step reads, validated on the host; `weighted` keeps evaluation's example weights."""
    precomputed = cfg.train.reference_mode == "precomputed"
    if np.ndim(batch["tokens"]) == 2:  # packed rows: slots weigh 1 (an example) or 0 (empty), always
        keys = [*PACKED_MODEL_FIELDS, "margin", "example_weight"] + (["prefix_ids"] if "prefix_ids" in batch else [])
        inputs = {k: batch[k] for k in keys + (["ref_logps"] if precomputed else [])}
        validate_packed_batch(inputs, cfg.loss, require_ref_logps=precomputed)
        return inputs
    keys = [*MODEL_FIELDS, "margin"] + (["example_weight"] if weighted else []) + (["ref_logps"] if precomputed else [])
    inputs = {k: batch[k] for k in keys}
    validate_batch(inputs, cfg.loss, require_ref_logps=precomputed)
    return inputs


def to_global(local_batch: dict, mesh: Mesh) -> dict:
    """Each process contributes its rows; the result is one global array per field, laid out on the mesh."""
    shardings = batch_shardings(local_batch, mesh)
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in local_batch.items()}
