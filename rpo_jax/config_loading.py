"""Reading a `Config`: YAML files with `include:`, `section.key=value` overrides, and the shared config flags.

Every value is checked against its dataclass field type while it is read; an unknown key or a wrong type raises
`ConfigError` naming the dotted key. `config_to_dict` is the inverse (what checkpoints store).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.files import local_path_arg
from rpo_jax.config import MESH_AXES, Config, ConfigError, MeshConfig


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Checks/converts a YAML value to the annotated field type; raises naming the dotted key."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(annotation, value, key)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a bool, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an int, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a float, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a float, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation}")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s): {', '.join(where + k for k in unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Reads a YAML file; a top-level `include: [files]` (relative paths) is merged first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: include cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        merged = merge_dicts(merged, read_yaml(path.parent / inc, (*seen, path)))
    return merge_dicts(merged, raw)


def parse_override(override: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML so numbers/bools/lists get their types)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, text = override.split("=", 1)
    return key.strip().split("."), yaml.safe_load(text) if text.strip() else ""


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = (), cls: type = Config) -> Any:
    """`raw` (+ `section.key=value` overrides) as the typed dataclass `cls` (the run `Config` unless told)."""
    for override in overrides:
        path, value = parse_override(override)
        update: dict = value
        for part in reversed(path):
            update = {part: update}
        raw = merge_dicts(raw, update)
    return _build(cls, raw, "")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), cls: type = Config) -> Any:
    """Loads a YAML config (with includes) as `cls` and applies `a.b=value` overrides."""
    return config_from_dict(read_yaml(Path(path)), overrides, cls)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON; inverse of `config_from_dict`."""

    def convert(v):
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


def parse_mesh_sizes(text: str) -> dict[str, int]:
    """argparse `type=` for `--mesh`: `data=1,fsdp=-1,tensor=1` -> {"data": 1, "fsdp": -1, "tensor": 1}; omitted
    axes are left out (a config's mesh section, or MeshConfig's defaults, fill them)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in MESH_AXES:
            raise argparse.ArgumentTypeError(f"{part!r} must look like data=N, fsdp=N or tensor=N")
        try:
            sizes[name] = int(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{name}={value!r} is not an integer") from e
    try:
        MeshConfig(**sizes)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"{e}") from e
    return sizes


def add_mesh_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mesh",
        type=parse_mesh_sizes,
        default={},
        metavar="data=D,fsdp=F,tensor=T",
        help="device mesh axis sizes, -1 = all remaining devices (default: the config's mesh "
        "section where there is a config, else data=1,fsdp=-1,tensor=1)",
    )


def mesh_from_args(args: argparse.Namespace) -> MeshConfig:
    """The `--mesh` of a command that has no config file."""
    return MeshConfig(**args.mesh)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set section.key=value`, as every config-driven command takes them."""
    parser.add_argument("--config", required=True, type=local_path_arg, help="YAML run config (see configs/run/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable; unknown keys are errors)",
    )


def config_from_args(args: argparse.Namespace, *extra_overrides: str) -> Config:
    """The config of `add_config_arguments`' flags; `--mesh` (when the command has it) overrides `mesh.*`, and
    `extra_overrides` (what the command's own flags mean, e.g. `train.steps=N`) apply last."""
    mesh = [f"mesh.{name}={size}" for name, size in getattr(args, "mesh", {}).items()]
    return load_config(args.config, [*args.overrides, *mesh, *extra_overrides])
