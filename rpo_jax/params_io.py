"""Model parameters as an Orbax checkpoint folder, with the configs needed to rebuild the model.

Layout of a params checkpoint `DIR/`:
  params/             Orbax (StandardCheckpointer) save of `nnx.to_pure_dict(state)`: nested dict of arrays
  model_config.json   `dataclasses.asdict(ModelConfig)`; lets loaders build abstract shapes and check them
  lora_config.json    `dataclasses.asdict(LoraConfig)`; rank 0 when the state has no adapters

`save_params` writes into `.DIR.tmp-params` and renames it to `DIR` once everything (Orbax's own commit
included) is on disk, so a crash never leaves a half-written `DIR`. Single-process (one host) only.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from rpo_jax.config import ConfigError, LoraConfig, ModelConfig, config_from_dict

PARAMS_DIR = "params"
MODEL_CONFIG_FILE = "model_config.json"
LORA_CONFIG_FILE = "lora_config.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameters do not fit the model it is being restored into."""


def save_params(path: str | Path, state: nnx.State, model_cfg: ModelConfig, lora_cfg: LoraConfig) -> Path:
    """Saves an NNX parameter state (sharded or not) plus its configs to a new folder `path`."""
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path}: already exists; refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-params"
    if tmp.exists():  # left by an interrupted save
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, nnx.to_pure_dict(state))
        checkpointer.wait_until_finished()
        checkpointer.close()
        (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model_cfg), indent=2) + "\n")
        (tmp / LORA_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(lora_cfg), indent=2) + "\n")
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {path.parent} a params checkpoint from save_params?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from e


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig a params checkpoint was saved with (validated like a YAML config)."""
    file = Path(path) / MODEL_CONFIG_FILE
    try:
        return config_from_dict({"model": _read_json(file)}).model
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from e


def read_lora_config(path: str | Path) -> LoraConfig:
    """The LoraConfig a params checkpoint was saved with."""
    file = Path(path) / LORA_CONFIG_FILE
    try:
        return config_from_dict({"lora": _read_json(file)}).lora
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from e


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def restore_params(path: str | Path, abstract_state: nnx.State, shardings: nnx.State) -> nnx.State:
    """Restores a params checkpoint directly into `shardings`, checking names, shapes and dtypes first.

    `abstract_state` (e.g. `nnx.split(nnx.eval_shape(make_model))[1]`) fixes which parameters are read and
    their shapes/dtypes; the checkpoint must hold exactly those. To load a base checkpoint into a LoRA model,
    pass only the base params (`nnx.state(abstract, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))`) and their
    shardings, then merge with the freshly initialised adapters. Returns a new state; the input is untouched.
    """
    params_dir = Path(path).absolute() / PARAMS_DIR
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{params_dir}: not found (is {path} a params checkpoint from save_params?)")
    checkpointer = ocp.StandardCheckpointer()
    stored = _flatten(checkpointer.metadata(params_dir).item_metadata.tree)
    wanted_tree = nnx.to_pure_dict(abstract_state)
    wanted = _flatten(wanted_tree)
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
        raise CheckpointMismatchError(f"{params_dir}: parameters differ from the model: missing {missing}, "
                                      f"unexpected {extra}")
    for name, want in wanted.items():
        have = stored[name]
        if tuple(have.shape) != tuple(want.shape) or jax.numpy.dtype(have.dtype) != jax.numpy.dtype(want.dtype):
            raise CheckpointMismatchError(
                f"{params_dir}: parameter {name} is {tuple(have.shape)} {have.dtype} in the checkpoint but "
                f"{tuple(want.shape)} {want.dtype} in the model (compare {Path(path) / MODEL_CONFIG_FILE})")
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          wanted_tree, nnx.to_pure_dict(shardings))
    restored = checkpointer.restore(params_dir, target)
    checkpointer.close()
    state = jax.tree.map(lambda x: x, abstract_state)  # a copy: replace_by_pure_dict mutates the State
    nnx.replace_by_pure_dict(state, restored)
    return state
