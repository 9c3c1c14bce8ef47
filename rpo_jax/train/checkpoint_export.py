"""What `rpo-jax export-hf` exports: a params checkpoint, or a training step checkpoint
(`<output_dir>/checkpoints/<step>`).

A step checkpoint holds the whole train state (parameters, optimizer moments, counters) and the run's resolved
config; only the trained parameters are read back, straight into their shardings. Under LoRA those are the
adapters alone: the frozen base comes from the run's `train.init_checkpoint` (or, without one, the same seeded
initialisation the run started from), as when the run itself exports. A step's export also gets the run's chat
files (`hf_chat_files`), as the run's own `hf/` does.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from data_pipeline.errors import DataFileError, OutputExistsError, UserError
from data_pipeline.storage import absolute_storage_path, storage_path
from rpo_jax.config.loading import config_from_stored
from rpo_jax.config.schema import Config, LoraConfig
from rpo_jax.io.hf_export import export_hf
from rpo_jax.io.params import load_params_checkpoint
from rpo_jax.train.hf_chat_files import run_chat_files
from rpo_jax.train.policy import build_policy, policy_layout

STATE_ITEM, META_ITEM = "state", "meta"


class StepCheckpointError(UserError, ValueError):
    """A folder that looks like a step checkpoint but cannot be read as one."""


def is_step_checkpoint(path: str | Path) -> bool:
    path = storage_path(path)
    return (path / STATE_ITEM).is_dir() and (path / META_ITEM).is_dir()


def step_checkpoint_config(path: str | Path) -> Config:
    """The resolved run config stored with the step."""
    meta_dir = absolute_storage_path(path) / META_ITEM
    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)
    except Exception as e:  # noqa: BLE001 - Orbax raises several types for a missing or damaged item
        raise StepCheckpointError(f"{meta_dir}: cannot read the run config of this step ({e})") from e
    return config_from_stored(meta["config"])


def load_step_params(path: str | Path, mesh: Mesh) -> tuple[Config, dict]:
    """(run config, every parameter as one nested dict with LoRA factors beside their base weights)."""
    cfg = step_checkpoint_config(path)
    layout = policy_layout(cfg, mesh)
    uses_lora = cfg.lora.rank > 0
    abstract = layout.abstract_lora if uses_lora else layout.abstract_base
    shardings = layout.lora_state_shardings if uses_lora else layout.base_state_shardings
    target = {
        "params": jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract.to_pure_dict(),
            shardings.to_pure_dict(),
        )
    }
    state_dir = absolute_storage_path(path) / STATE_ITEM
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
            ),
        )
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in Orbax/TensorStore in many ways
        raise StepCheckpointError(f"{state_dir}: cannot read the trained parameters ({e})") from e
    trained = restored["params"]
    if not uses_lora:
        return cfg, trained
    policy = build_policy(cfg, mesh, cfg.train.init_checkpoint)
    return cfg, policy.merged_params(trained, policy.frozen)


def step_numbers(folder: Path) -> list[int]:
    """The steps of the step checkpoints directly in `folder` (none if it is not a folder)."""
    children = folder.iterdir() if folder.is_dir() else ()
    return sorted(int(p.name) for p in children if p.name.isdigit() and is_step_checkpoint(p))


def _refuse_missing(path: Path) -> None:
    """A step that does not exist: say so, and which steps its checkpoints/ folder does hold."""
    if path.exists():
        return
    steps = step_numbers(path.parent)
    if steps:
        beside = f" (the steps in {path.parent}: {', '.join(map(str, steps))})"
    elif path.parent.name == "checkpoints" and path.parent.is_dir():
        beside = f" ({path.parent} holds no step checkpoint)"
    else:
        beside = ""
    raise DataFileError(f"{path}: no such checkpoint folder{beside}")


def _refuse_run_folders(path: Path) -> None:
    """A run folder or its checkpoints/ folder is one level above what export needs: name the steps."""
    for root in (path / "checkpoints", path):
        steps = step_numbers(root)
        if steps:
            raise StepCheckpointError(
                f"{path}: holds training step checkpoints, not one: pass --checkpoint {root / str(steps[-1])} "
                f"(steps: {', '.join(map(str, steps))})"
            )


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    mesh: Mesh,
    *,
    dtype: str | None,
    max_shard_bytes: int,
    tokenizer_dir: str | Path | None,
) -> tuple[list[str], LoraConfig]:
    """Writes the HF folder `output` for a params or step checkpoint; returns (files written, LoRA config merged).
    A step checkpoint's tokenizer defaults to its run's (`tokenizer_dir` None)."""
    path = storage_path(checkpoint)
    if storage_path(output).exists():
        raise OutputExistsError(f"{output}: already exists; refusing to overwrite")
    _refuse_missing(path)
    extra_files: dict[str, bytes] = {}
    if is_step_checkpoint(path):
        cfg, params = load_step_params(path, mesh)
        model_cfg, lora_cfg = cfg.model, cfg.lora
        extra_files = run_chat_files(cfg)
        if tokenizer_dir is None and cfg.data.tokenizer_path and Path(cfg.data.tokenizer_path).is_dir():
            tokenizer_dir = cfg.data.tokenizer_path
    else:
        if path.is_dir():
            _refuse_run_folders(path)
        model_cfg, lora_cfg, params = load_params_checkpoint(path, mesh)
    files = export_hf(
        params,
        model_cfg,
        lora_cfg,
        output,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
        tokenizer_dir=tokenizer_dir,
        extra_files=extra_files,
    )
    return files, lora_cfg
