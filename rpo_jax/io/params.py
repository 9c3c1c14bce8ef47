"""Model parameters as an Orbax checkpoint folder, with the configs needed to rebuild the model.

Layout of a params checkpoint `DIR/`:
  params/             Orbax (StandardCheckpointer) save of `nnx.to_pure_dict(state)`: nested dict of arrays
  model_config.json   `dataclasses.asdict(ModelConfig)`; lets loaders build abstract shapes and check them
  lora_config.json    `dataclasses.asdict(LoraConfig)`; rank 0 when the state has no adapters

`save_params` writes into `.DIR.tmp-params` and renames it to `DIR` once everything (Orbax's own commit
included) is on disk, so a crash never leaves a half-written `DIR`. A bucket (gs://) has no rename: there `DIR`
is written in place, `model_config.json` last, and a folder without it is not a checkpoint (`_read_json` says
so). Multi-host, every process calls it and
writes its own shards of each array (nothing is gathered); process 0 writes the rest and renames.

Loaders of model weights (`generate`, `eval`, `train.init_checkpoint`) also take a HuggingFace Llama folder
(config.json + safetensors, e.g. a trained run's `<output_dir>/hf`): `is_hf_folder` tells the two apart, and
`checkpoint_model_config`, `load_checkpoint` and `load_hf_base` read either. An HF folder is a merged model:
no LoRA config (rank 0).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from data_pipeline.errors import DataFileError, OutputExistsError, UserError, malformed_json
from data_pipeline.storage import absolute_storage_path, is_bucket_path, local_copy, remove_tree
from rpo_jax.config.loading import config_from_dict
from rpo_jax.config.schema import ConfigError, LoraConfig, ModelConfig, check_storage_path
from rpo_jax.io.hf import INDEX_FILE, SINGLE_FILE, load_hf_state, read_hf_config
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import state_shardings

PARAMS_DIR = "params"
MODEL_CONFIG_FILE = "model_config.json"
LORA_CONFIG_FILE = "lora_config.json"
# ModelConfig fields that say how to run a model, not what it computes: an HF folder has none of them.
EXECUTION_FIELDS = ("param_dtype", "dtype", "scan_layers", "remat_policy", "attention", "mlp_chunk_size")
# Also not compared between a run config and an HF folder: it only scales random initialisation.
_NOT_ARCHITECTURE = (*EXECUTION_FIELDS, "initializer_range")


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint's parameters do not fit the model it is being restored into."""


def save_params(path: str | Path, state: nnx.State, model_cfg: ModelConfig, lora_cfg: LoraConfig) -> Path:
    """Saves an NNX parameter state (sharded or not) plus its configs to a new folder `path`."""
    path = absolute_storage_path(check_storage_path(str(path), "params checkpoint"))
    if path.exists():
        raise OutputExistsError(f"{path}: already exists; refusing to overwrite")
    main, several = jax.process_index() == 0, jax.process_count() > 1
    in_bucket = is_bucket_path(path)
    tmp = path if in_bucket else path.parent / f".{path.name}.tmp-params"
    if main and not in_bucket:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by an interrupted save
            shutil.rmtree(tmp)
        tmp.mkdir()
    if several:
        multihost_utils.sync_global_devices("rpo_jax_save_params_start")
    try:
        checkpointer = ocp.StandardCheckpointer()  # every process writes its shards; Orbax syncs the processes
        checkpointer.save(tmp / PARAMS_DIR, nnx.to_pure_dict(state))
        checkpointer.wait_until_finished()
        checkpointer.close()
        if main:  # model_config.json last: in a bucket it is what marks the folder complete
            (tmp / LORA_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(lora_cfg), indent=2) + "\n")
            (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model_cfg), indent=2) + "\n")
            if not in_bucket:
                tmp.rename(path)
    except BaseException:
        if main:
            remove_tree(tmp)
        raise
    if several:
        multihost_utils.sync_global_devices("rpo_jax_save_params_done")
    return path


def _read_json(path) -> dict:
    if not path.parent.is_dir():
        raise DataFileError(f"{path.parent}: no such checkpoint folder")
    if not path.is_file():
        raise DataFileError(
            f"{path}: not found (is {path.parent} a params checkpoint from save_params, or an "
            f"HF folder with config.json and {SINGLE_FILE} or {INDEX_FILE}?)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: {malformed_json(e)}") from e


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig a params checkpoint was saved with (validated like a YAML config)."""
    file = absolute_storage_path(path) / MODEL_CONFIG_FILE
    raw = _read_json(file)  # its errors name the file already
    try:
        return config_from_dict({"model": raw}).model
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from e


def read_lora_config(path: str | Path) -> LoraConfig:
    """The LoraConfig a params checkpoint was saved with."""
    file = absolute_storage_path(path) / LORA_CONFIG_FILE
    raw = _read_json(file)  # its errors name the file already
    try:
        return config_from_dict({"lora": raw}).lora
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from e


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def checked_params_dir(path: str | Path, wanted_tree: dict) -> Path:
    """The `params/` folder of params checkpoint `path`, once its arrays have exactly the names, shapes and dtypes
    of `wanted_tree` (a pure dict of arrays or ShapeDtypeStructs); else an error naming the first difference."""
    params_dir = absolute_storage_path(check_storage_path(str(path), "params checkpoint")) / PARAMS_DIR
    if not params_dir.is_dir():
        raise DataFileError(
            f"{params_dir}: not found (is {path} a params checkpoint from save_params, or an "
            f"HF folder with config.json and {SINGLE_FILE} or {INDEX_FILE}?)"
        )
    with ocp.StandardCheckpointer() as checkpointer:
        stored = _flatten(checkpointer.metadata(params_dir).item_metadata.tree)
    wanted = _flatten(wanted_tree)
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
        raise CheckpointMismatchError(
            f"{params_dir}: parameters differ from the model: missing {missing}, unexpected {extra}"
        )
    for name, want in wanted.items():
        have = stored[name]
        if tuple(have.shape) != tuple(want.shape) or jax.numpy.dtype(have.dtype) != jax.numpy.dtype(want.dtype):
            raise CheckpointMismatchError(
                f"{params_dir}: parameter {name} is {tuple(have.shape)} {have.dtype} in the checkpoint but "
                f"{tuple(want.shape)} {want.dtype} in the model (compare "
                f"{absolute_storage_path(path) / MODEL_CONFIG_FILE})"
            )
    return params_dir


def restore_params(path: str | Path, abstract_state: nnx.State, shardings: nnx.State) -> nnx.State:
    """Restores a params checkpoint directly into `shardings`, checking names, shapes and dtypes first.

    `abstract_state` (e.g. `nnx.split(nnx.eval_shape(make_model))[1]`) fixes which parameters are read and
    their shapes/dtypes; the checkpoint must hold exactly those. To load a base checkpoint into a LoRA model,
    pass only the base params (`nnx.state(abstract, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))`) and their
    shardings, then merge with the freshly initialised adapters. Returns a new state; the input is untouched.
    """
    wanted_tree = nnx.to_pure_dict(abstract_state)
    params_dir = checked_params_dir(path, wanted_tree)
    checkpointer = ocp.StandardCheckpointer()
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), wanted_tree, nnx.to_pure_dict(shardings)
    )
    restored = checkpointer.restore(params_dir, target)
    checkpointer.close()
    state = jax.tree.map(lambda x: x, abstract_state)  # a copy: replace_by_pure_dict mutates the State
    nnx.replace_by_pure_dict(state, restored)
    return state


# ---------------------------------------------------------------- either format: params checkpoint or HF folder


def is_hf_folder(path: str | Path) -> bool:
    """True for a HF Llama folder (config.json + model.safetensors or its index, none of save_params' files)."""
    path = absolute_storage_path(path)
    if any((path / name).exists() for name in (PARAMS_DIR, MODEL_CONFIG_FILE, LORA_CONFIG_FILE)):
        return False
    return (path / "config.json").is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def checkpoint_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a params checkpoint, or of an HF folder (its dtype; scan_layers on, no remat)."""
    return read_hf_config(hf_folder_here(path)) if is_hf_folder(path) else read_model_config(path)


def hf_folder_here(path: str | Path) -> str | Path:
    """An HF folder in a bucket is read from a copy on this host's disk (safetensors files are memory-mapped);
    its config.json, uploaded last by export-hf, is what makes it an HF folder at all (`is_hf_folder`)."""
    return local_copy(str(path), "hf_weights") if is_bucket_path(path) else path


def load_checkpoint(path: str | Path, mesh: Mesh) -> tuple[ModelConfig, LoraConfig, nnx.State]:
    """The whole model of a params checkpoint or an HF folder, read straight into its shardings on `mesh`."""
    if is_hf_folder(path):
        cfg, state = load_hf_state(hf_folder_here(path), mesh)
        return cfg, LoraConfig(), state
    return load_params_checkpoint(path, mesh)


def load_params_checkpoint(path: str | Path, mesh: Mesh) -> tuple[ModelConfig, LoraConfig, nnx.State]:
    """The whole model (LoRA factors included) of a params checkpoint, read straight into its shardings."""
    cfg, lora_cfg = read_model_config(path), read_lora_config(path)
    abstract_state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, lora_cfg, rngs=nnx.Rngs(0))))[1]
    return cfg, lora_cfg, restore_params(path, abstract_state, state_shardings(abstract_state, mesh))


def _architecture(cfg: ModelConfig) -> dict[str, object]:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _NOT_ARCHITECTURE}
    rope = fields.pop("rope_parameters")
    used = ("rope_type", "rope_theta") if rope.rope_type == "default" else dataclasses.asdict(rope)
    fields.update({f"rope_parameters.{name}": getattr(rope, name) for name in used})
    return fields


def check_hf_architecture(path: str | Path, model_cfg: ModelConfig) -> None:
    """`CheckpointMismatchError` naming each architecture field where the HF folder (on this host) and `model_cfg`
    differ (every field but `EXECUTION_FIELDS` and initializer_range)."""
    ours, theirs = _architecture(model_cfg), _architecture(read_hf_config(path))
    differ = [
        f"{name} (model {ours[name]!r}, config.json {theirs[name]!r})" for name in ours if ours[name] != theirs[name]
    ]
    if differ:
        raise CheckpointMismatchError(
            f"{absolute_storage_path(path) / 'config.json'}: the HF folder's architecture differs from "
            f"the model it is loaded into (a run config's model section): "
            f"{'; '.join(differ)}"
        )


def load_hf_base(path: str | Path, model_cfg: ModelConfig, mesh: Mesh) -> nnx.State:
    """The (non-LoRA) weights of an HF folder for a model configured as `model_cfg`, sharded on `mesh`.

    The folder's config.json must describe the same architecture as `model_cfg` (every field but
    `EXECUTION_FIELDS` and initializer_range), else `CheckpointMismatchError` names each differing field; the
    execution settings come from `model_cfg` (the weights are cast to its param_dtype).
    """
    path = hf_folder_here(path)
    check_hf_architecture(path, model_cfg)
    _, state = load_hf_state(
        path,
        mesh,
        param_dtype=model_cfg.param_dtype,
        scan_layers=model_cfg.scan_layers,
        remat_policy=model_cfg.remat_policy,
    )
    return state


def import_hf(
    hf_dir: str | Path, output: str | Path, mesh: Mesh, *, param_dtype: str | None = None
) -> tuple[ModelConfig, Path]:
    """An HF Llama folder -> a new params checkpoint at `output`, each tensor read straight into its sharding."""
    if absolute_storage_path(output).exists():
        raise OutputExistsError(f"{output}: already exists; refusing to overwrite")
    cfg, state = load_hf_state(hf_dir, mesh, param_dtype=param_dtype)
    return cfg, save_params(output, state, cfg, LoraConfig())


def import_gguf(
    gguf_path: str | Path,
    output: str | Path,
    mesh: Mesh,
    *,
    param_dtype: str = "float32",
    hf_output: str | Path | None = None,
) -> tuple[ModelConfig, Path]:
    """A GGUF Llama file -> params checkpoint, through an HF folder (kept at `hf_output` when given, else a
    scratch folder that is deleted)."""
    import tempfile

    from rpo_jax.io.gguf import gguf_to_hf

    if absolute_storage_path(output).exists():
        raise OutputExistsError(f"{output}: already exists; refusing to overwrite")
    with tempfile.TemporaryDirectory(prefix="rpo_jax_gguf_") as scratch:
        hf_dir = Path(hf_output) if hf_output else Path(scratch) / "hf"
        gguf_to_hf(gguf_path, hf_dir)
        return import_hf(hf_dir, output, mesh, param_dtype=param_dtype)
