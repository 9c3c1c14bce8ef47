"""Typed configs: every YAML under configs/ parses, overrides are typed, unknown keys raise, every field is read."""

import dataclasses
import pathlib
import re

import pytest
import yaml

from rpo_jax.config import schema as config_lib
from rpo_jax.config.loading import config_from_dict, config_to_dict, load_config, merge_dicts, read_yaml
from rpo_jax.config.schema import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT_DIR = ROOT / "configs" / "experiment"  # `rpo-jax experiment` configs (experiments.config)
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if EXPERIMENT_DIR not in p.parents)
EXPERIMENT_FILES = sorted(EXPERIMENT_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, config_lib.Config)


def experiment_config_class(path):
    """What `rpo-jax experiment` loads the file as: the mechanism design's settings, or the SmolLM2 experiment's."""
    from experiments.config import ExperimentConfig
    from experiments.mechanism_config import DESIGN, MechanismConfig

    return MechanismConfig if read_yaml(path).get("design") == DESIGN else ExperimentConfig


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_every_experiment_config_parses(path):
    cls = experiment_config_class(path)
    assert isinstance(load_config(path, cls=cls), cls)


def test_presets_exist():
    names = {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")}
    assert {"tiny", "smollm2_135m", "llama3_2_1b", "llama3_1_8b", "llama3_1_70b"} <= names


def test_override_types_and_nesting():
    overrides = [
        "loss.beta=0.25",
        "mesh.fsdp=4",
        "loss.loss_type=[rpo, sft]",
        "loss.loss_weights=[1, 0.5]",
        "model.rope_parameters.rope_theta=5e5",
    ]
    cfg = load_config(ROOT / "configs/base.yaml", overrides)
    assert cfg.loss.beta == 0.25 and cfg.mesh.fsdp == 4
    assert cfg.loss.loss_type == ("rpo", "sft") and cfg.loss.loss_weights == (1.0, 0.5)
    assert cfg.model.rope_parameters.rope_theta == 5e5


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.bta=0.1", "loss.bta"),
        ("nosuch.x=1", "nosuch"),
        ("loss.beta=abc", "loss.beta"),
        ("mesh.fsdp=2.5", "mesh.fsdp"),
        ("model.scan_layers=3", "model.scan_layers"),
        ("loss.beta=0", "loss.beta"),
        ("model.num_key_value_heads=3", "num_key_value_heads"),
        ("model.rope_parameters.rope_type=yarn", "rope_type"),
        ("train.reference_mode=frozen", "train.reference_mode"),
        ("loss.loss_weights=[1, 2]", "loss_weights"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ROOT / "configs/base.yaml", [override])


PATH_SETTINGS = [
    "train.output_dir",
    "train.init_checkpoint",
    "data.train_path",
    "data.eval_path",
    "data.pairs_path",
    "data.eval_pairs_path",
    "data.tokenizer_path",
    "train.compilation_cache_dir",
]
LOCAL_ONLY = {"data.tokenizer_path"}  # read by transformers, which opens local folders only


@pytest.mark.parametrize("setting", PATH_SETTINGS)
@pytest.mark.parametrize("url", ["gs://bkt/runs/x", "s3://bkt/x", "https://host/x"])
def test_path_settings_take_gs_urls_and_refuse_others_naming_the_setting(setting, url):
    """gs:// goes through data_pipeline.storage; another URL would silently become a local folder ./s3:/b/x."""
    overrides = [f"{setting}={url}"]
    if setting.startswith("data.") and "pairs" in setting:
        overrides.append("data.tokenizer_path=tok")
    if url.startswith("gs://") and setting not in LOCAL_ONLY:
        section, key = setting.split(".")
        assert getattr(getattr(load_config(ROOT / "configs/base.yaml", overrides), section), key) == url
        return
    why = "this path must be local" if setting in LOCAL_ONLY else "only gs:// URLs (Google Cloud Storage)"
    with pytest.raises(ConfigError, match=re.escape(f"{setting}={url}: {why}")):
        load_config(ROOT / "configs/base.yaml", overrides)


def test_path_settings_cover_every_path_field():
    """A new *_path / *_dir / *checkpoint field must join PATH_SETTINGS (and the __post_init__ checks)."""
    names = [
        f"{section.name}.{field}"
        for section in dataclasses.fields(config_lib.Config)
        for field, _ in _fields(getattr(config_lib, section.type) if isinstance(section.type, str) else section.type)
    ]
    path_like = [n for n in names if re.search(r"(_path|_dir|checkpoint)$", n)]
    assert sorted(path_like) == sorted(PATH_SETTINGS)


def test_local_paths_with_colons_are_accepted():
    cfg = load_config(
        ROOT / "configs/base.yaml", ["train.output_dir=/mnt/shared/runs/a:b", "train.init_checkpoint=ckpt/gs:/x"]
    )
    assert cfg.train.output_dir == "/mnt/shared/runs/a:b"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export-hf", "--checkpoint", "ckpt", "--output", "s3://bkt/hf"], "--output: s3://bkt/hf: only gs:// URLs"),
        (["export-hf", "--checkpoint", "ckpt", "--output", "o", "--tokenizer", "gs://b/t"], "this path must be local"),
    ],
)
def test_cli_path_flags_refuse_urls_they_cannot_read(argv, message, capsys):
    from rpo_jax.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_key_in_file_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rat: 1.0\n")
    with pytest.raises(ConfigError, match="optim.learning_rat"):
        load_config(bad)


def test_round_trip_through_dict():
    cfg = load_config(ROOT / "configs/model/llama3_1_8b.yaml")
    assert config_from_dict(config_to_dict(cfg)) == cfg


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else getattr(config_lib, f.type, None)):
            yield from _fields(getattr(config_lib, f.type) if isinstance(f.type, str) else f.type, f.name + ".")
        else:
            yield prefix + f.name, f.name


def test_every_field_is_read_somewhere():
    """Each config field name must appear as an attribute access outside the schema (no ignored knobs)."""
    sources = "\n".join(
        p.read_text()
        for d in ("rpo_jax", "data_pipeline", "benchmarks")
        for p in (ROOT / d).rglob("*.py")
        if p != ROOT / "rpo_jax" / "config" / "schema.py"
    )
    missing = []
    for section in dataclasses.fields(config_lib.Config):
        section_cls = getattr(config_lib, section.type) if isinstance(section.type, str) else section.type
        for dotted, name in _fields(section_cls):
            if not re.search(rf"\.{name}\b", sources):
                missing.append(f"{section.name}.{dotted}")
    assert not missing, f"config fields never read: {missing}"


def test_base_yaml_lists_every_default_and_nothing_else():
    """configs/base.yaml documents the dataclass defaults; it must equal them exactly (no second source)."""
    raw = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    assert raw == config_to_dict(config_lib.Config())


def _redundant(values: dict, inherited: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(inherited.get(key), dict):
            out += _redundant(value, inherited[key], f"{prefix}{key}.")
        elif key in inherited and value == inherited[key]:
            out.append(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: p.name)
def test_presets_state_only_what_differs(path):
    """A run, model or experiment config sets only values that differ from what it inherits (its includes, then
    defaults)."""
    raw = yaml.safe_load(path.read_text())
    includes = raw.pop("include", [])
    inherited = {}
    for include in [includes] if isinstance(includes, str) else includes:
        inherited = merge_dicts(inherited, read_yaml(path.parent / include))
    if path.parent == EXPERIMENT_DIR:  # no complete default: an experiment must name its base model
        cls = experiment_config_class(path)
        defaults = {f.name: config_to_dict(f.default) for f in dataclasses.fields(cls)}
        if raw.get("design") is not None:
            defaults.pop("design")  # the key that tells `rpo-jax experiment` which design the file is
        inherited = merge_dicts(defaults, inherited)
    else:
        inherited = config_to_dict(config_from_dict(inherited))
    assert _redundant(raw, inherited) == []
