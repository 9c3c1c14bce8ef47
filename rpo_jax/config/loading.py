"""Reading a `Config`: YAML files with `include:`, `section.key=value` overrides, and the shared config flags.

Every value is checked against its dataclass field type while it is read; an unknown key or a wrong type raises
`ConfigError` naming the dotted key (a YAML syntax error names the file and line). `config_to_dict` is the
inverse (what checkpoints store).

Relative paths, one rule: a path setting (`PATH_SETTINGS`) written in a config file is read from the repository
root (`REPO_ROOT`, the folder holding configs/, rpo_jax/ and data_pipeline/), wherever the command runs; a path
given on the command line (`--set`, `--output-dir`) is read from the current directory, as a shell would. Both
are stored absolute. `include:` names files relative to the including file.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.files import local_path_arg, url_path_problem
from rpo_jax.config.schema import MESH_AXES, Config, ConfigError, MeshConfig

# The settings holding a filesystem path, as (section, key).
PATH_SETTINGS = (
    ("data", "train_path"),
    ("data", "eval_path"),
    ("data", "pairs_path"),
    ("data", "eval_pairs_path"),
    ("data", "tokenizer_path"),
    ("train", "output_dir"),
    ("train", "init_checkpoint"),
    ("train", "compilation_cache_dir"),
)
# The settings holding a list of {path, ...} mappings, each `path` read as PATH_SETTINGS are.
PATH_LIST_SETTINGS = (("data", "sources"),)
# Keys that were renamed: an old config naming one is told what to write instead.
RENAMED_SETTINGS = {
    "train.tensorboard": "train.tensorboard was replaced by train.trackers: write `trackers: [tensorboard]` in the "
    "train section (or --set 'train.trackers=[tensorboard]'; also wandb, trackio)",
}


# The source checkout this package runs from (configs/ beside rpo_jax/).
REPO_ROOT = Path(__file__).resolve().parents[2]


def config_root() -> Path:
    """Where relative paths in config files are read from: `REPO_ROOT`; an installed copy without a checkout
    has no repository (and no configs/), and then the current directory is used."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "configs").is_dir() else Path.cwd()


def path_rule() -> str:
    """The relative-path rule, for messages about a path that was not found."""
    return (
        f"relative paths in config files are read from the repository root {config_root()}, "
        "those given with --set or --output-dir from the current directory"
    )


def absolute_paths(raw: dict, base: Path) -> dict:
    """`raw` with each relative path setting made absolute against `base` ('' and URLs are left alone: '' means
    unset, a gs:// URL has no current directory, and any other URL is refused by the config with its own message)."""
    out = dict(raw)

    def absolute(value):
        if not isinstance(value, str) or not value or url_path_problem(value) or value.startswith("{output_dir}"):
            return value  # unset, a URL, or relative to train.output_dir (TrainConfig.compilation_cache_dir)
        return value if Path(value).is_absolute() else str(base / value)

    for section, key in PATH_SETTINGS + PATH_LIST_SETTINGS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if key == "sources" and isinstance(value, list):
            value = [{**v, "path": absolute(v["path"])} if isinstance(v, dict) and "path" in v else v for v in value]
        elif value is not None:
            value = absolute(value)
        if value is not None:
            out[section] = {**out[section], key: value}
    return out


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
        renamed = [RENAMED_SETTINGS[where + k] for k in unknown if where + k in RENAMED_SETTINGS]
        if renamed:
            raise ConfigError(renamed[0])
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
    raw = _parse_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        merged = merge_dicts(merged, read_yaml(path.parent / inc, (*seen, path)))
    return merge_dicts(merged, raw)


def _parse_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte {e.object[e.start]:#04x})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p) or e
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from e


def parse_override(override: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML so numbers/bools/lists get their types)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, text = override.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {override}: the value is not valid YAML ({getattr(e, 'problem', e)})") from e


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = (), cls: type = Config) -> Any:
    """`raw` (+ `section.key=value` overrides) as the typed dataclass `cls` (the run `Config` unless told). Relative
    run-config path overrides are made absolute against the current directory; the dict's own paths are taken as
    they are."""
    for override in overrides:
        path, value = parse_override(override)
        update: dict = value
        for part in reversed(path):
            update = {part: update}
        raw = merge_dicts(raw, absolute_paths(update, Path.cwd()) if cls is Config else update)
    return _build(cls, raw, "")


def config_from_stored(raw: dict) -> Config:
    """The run config a checkpoint stored (`config_to_dict`), by this version or an earlier one: a renamed key is
    carried over to its new name (train.tensorboard: true -> train.trackers: [tensorboard])."""
    train = dict(raw.get("train", {}))
    if "tensorboard" in train:
        train["trackers"] = ["tensorboard"] if train.pop("tensorboard") else []
    return config_from_dict({**raw, "train": train})


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), cls: type = Config) -> Any:
    """Loads a YAML config (with includes) as `cls` and applies `a.b=value` overrides. A run config's relative
    paths are read from `REPO_ROOT` (see `config_root`); other configs resolve their own paths."""
    raw = read_yaml(Path(path))
    return config_from_dict(absolute_paths(raw, config_root()) if cls is Config else raw, overrides, cls)


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
    """argparse `type=` for `--mesh`: `data=1,fsdp=-1,tensor=1` -> {"data": 1, "fsdp": -1, "tensor": 1} (and
    `dcn_data=N`, the slices); omitted axes are left out (a config's mesh section, or MeshConfig's defaults, fill
    them)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in (*MESH_AXES, "dcn_data"):
            raise argparse.ArgumentTypeError(f"{part!r} must look like data=N, fsdp=N, tensor=N or dcn_data=N")
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
        help="device mesh axis sizes within a slice, -1 = all remaining devices; dcn_data=N: data parallel over N "
        "TPU slices (default: the config's mesh section where there is a config, else data=1,fsdp=-1,tensor=1)",
    )


def mesh_from_args(args: argparse.Namespace) -> MeshConfig:
    """The `--mesh` of a command that has no config file."""
    return MeshConfig(**args.mesh)


def add_config_arguments(
    parser: argparse.ArgumentParser, config_help: str = "YAML run config (see configs/run/)", *, required: bool = True
) -> None:
    """`--config FILE` and repeatable `--set section.key=value`, as every config-driven command takes them."""
    parser.add_argument("--config", required=required, type=local_path_arg, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable; unknown keys are errors; default: none)",
    )


def config_from_args(args: argparse.Namespace, *extra_overrides: str) -> Config:
    """The config of `add_config_arguments`' flags; `--mesh` (when the command has it) overrides `mesh.*`, and
    `extra_overrides` (what the command's own flags mean, e.g. `train.steps=N`) apply last."""
    mesh = [f"mesh.{name}={size}" for name, size in getattr(args, "mesh", {}).items()]
    return load_config(args.config, [*args.overrides, *mesh, *extra_overrides])
