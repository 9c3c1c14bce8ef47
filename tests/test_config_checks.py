"""Every setting is checked when the config is read, naming it; YAML errors name file and line; relative paths
follow one rule; resume compares fingerprints, not paths; every command option documents its default."""

import argparse
import dataclasses
import importlib
import math
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from data_pipeline.errors import UserError
from rpo_jax.config.loading import PATH_SETTINGS, REPO_ROOT, config_root, config_to_dict, load_config
from rpo_jax.config.rules import BOUNDS, CHECKED_WITH_OTHERS, _parse
from rpo_jax.config.schema import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "base.yaml"


def _numeric_settings(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            yield from _numeric_settings(kind, f"{prefix}{field.name}.")
        elif kind in (int, float):
            yield f"{prefix}{field.name}", kind


def _outside(rule: str, kind: type) -> list:
    """Values just outside the interval `rule` (and NaN for floats)."""
    low, high, low_closed, high_closed = _parse(rule)
    step = 1 if kind is int else 1e-3
    values = [low - step if low_closed else low]
    if not math.isinf(high):
        values.append(high + step if high_closed else high)
    if kind is float:
        values.append(float("nan"))
    return [kind(v) if kind is int else v for v in values]


def test_every_numeric_setting_has_a_range():
    """A new int/float field must get a rule in config_rules.BOUNDS (or be checked beside its dataclass)."""
    ruled = {f"{section}.{name}" for section, rules in BOUNDS.items() for name in rules}
    numeric = {name for name, _ in _numeric_settings()}
    assert numeric - ruled - CHECKED_WITH_OTHERS == set()
    assert ruled - numeric == set()  # no rule for a field that does not exist


CASES = [
    (f"{section}.{name}", value)
    for section, rules in BOUNDS.items()
    for name, rule in rules.items()
    for value in _outside(rule, dict(_numeric_settings())[f"{section}.{name}"])
]


@pytest.mark.parametrize("setting, value", CASES, ids=[f"{s}={v}" for s, v in CASES])
def test_out_of_range_values_are_refused_naming_the_setting(setting, value):
    overrides = [f"{setting}={value if not (isinstance(value, float) and math.isnan(value)) else '.nan'}"]
    if setting == "loss.label_smoothing":
        overrides.append("loss.loss_type=[sigmoid]")
    with pytest.raises(ConfigError, match=re.escape(setting)):
        load_config(BASE, overrides)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=0", "train.steps must be >= 1, got 0"),
        ("train.steps=-5", "train.steps must be >= 1, got -5"),
        ("optim.learning_rate=-1e-3", "optim.learning_rate must be > 0, got -0.001"),
        ("checkpoint.save_every=0", "checkpoint.save_every must be >= 1, got 0"),
        ("model.num_key_value_heads=0", "model.num_key_value_heads must be >= 1"),
        ("model.eos_token_id=32000", "model.eos_token_id=32000 is not a token id"),
        ("data.length_buckets=[256, 4096]", "data.length_buckets: [4096]"),
        ("loss.loss_weights=[0]", "loss.loss_weights must be finite, >= 0 and not all 0"),
        ("lora.target_modules=[]", "lora.target_modules is empty"),
    ],
)
def test_impossible_settings_are_refused(override, message):
    extra = ["lora.rank=4"] if override.startswith("lora.") else []
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(BASE, [override, *extra])


def test_llama3_rope_needs_high_above_low_frequency_factor():
    with pytest.raises(ConfigError, match="high_freq_factor"):
        load_config(BASE, ["model.rope_parameters.rope_type=llama3", "model.rope_parameters.high_freq_factor=1.0"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 10\n  output_dir: [unclosed\nloss:\n  beta: 0.1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:4:") + ".*YAML syntax error"):
        load_config(bad)


def test_non_utf8_config_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  output_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:2: not UTF-8")):
        load_config(bad)


def test_bad_override_value_is_named():
    with pytest.raises(ConfigError, match=re.escape("--set loss.loss_type=[rpo")):
        load_config(BASE, ["loss.loss_type=[rpo"])


def test_relative_paths_in_files_are_read_from_the_repo_root_and_on_the_command_line_from_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the repository
    cfg = load_config(ROOT / "configs/run/tiny_rpo.yaml", ["data.eval_pairs_path=mine.jsonl"])
    assert REPO_ROOT == config_root() == ROOT
    assert cfg.data.pairs_path == str(ROOT / "data_pipeline/assets/default_pairs/pairs.jsonl")
    assert Path(cfg.data.tokenizer_path).is_dir() and cfg.train.output_dir == str(ROOT / "runs/tiny_rpo")
    assert cfg.data.eval_pairs_path == str(tmp_path / "mine.jsonl")
    paths = [getattr(getattr(cfg, s), k) for s, k in PATH_SETTINGS]
    assert all(Path(v).is_absolute() for v in paths if v and not v.startswith("{output_dir}/"))  # inside output_dir


def test_resume_compares_fingerprints_not_paths():
    from rpo_jax.io.checkpoints import CheckpointMismatchError, check_resume_compatible

    old = config_to_dict(load_config(BASE, ["data.train_path=/old/place/data/train", "train.output_dir=/old/place"]))
    new = config_to_dict(load_config(BASE, ["data.train_path=/new/place/data/train", "train.output_dir=/new/place"]))
    prints = {"data_fingerprint": "abc", "eval_data_fingerprint": "", "init_checkpoint_fingerprint": ""}
    meta = {"config": old, **prints}
    check_resume_compatible(meta, new, prints, allow_config_change=False, allow_data_change=False)
    changed = {**prints, "data_fingerprint": "xyz"}
    with pytest.raises(CheckpointMismatchError, match="data.train_path: the checkpoint was trained on"):
        check_resume_compatible(meta, new, changed, allow_config_change=False, allow_data_change=False)
    check_resume_compatible(meta, new, changed, allow_config_change=False, allow_data_change=True)


def _command_parsers():
    from rpo_jax.cli import COMMANDS, HelpFormatter

    for name, (module, _) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"rpo-jax {name}", formatter_class=HelpFormatter)
        importlib.import_module(module).add_arguments(parser)
        yield name, parser


@pytest.mark.parametrize("name, parser", list(_command_parsers()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_has_help_and_its_default(name, parser):
    """Every option says what it does and what happens without it: the formatter appends '(default: X)', and
    where there is no value to show (None, empty) the help text says the default itself."""
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._get_help_string(action) if action.help else ""
        if not (action.help or "").strip() or not (action.required or "default" in text.lower()):
            missing.append("/".join(action.option_strings) or action.dest)
    assert not missing, f"rpo-jax {name}: options without a description or default: {missing}"


# Options whose 0 is an ordinary value rather than a switch (a seed of 0 is a seed like any other).
ZERO_IS_A_VALUE = {"seed"}


@pytest.mark.parametrize("name, parser", list(_command_parsers()), ids=lambda x: x if isinstance(x, str) else "")
def test_help_states_the_default_once_and_what_0_means(name, parser):
    """No help shows two "(default: ...)" (its own and the formatter's), and a numeric option defaulting to 0 or
    -1 - which in this CLI means all, auto or off - says which ("0 = all", "-1 = all remaining devices")."""
    formatter = parser._get_formatter()
    doubled, unexplained = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.help:
            continue
        text = formatter._expand_help(action)
        flag = "/".join(action.option_strings) or action.dest
        if len(re.findall(r"\bdefault\b", text, flags=re.IGNORECASE)) > 1:
            doubled.append(f"{flag}: {text}")
        default = action.default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and default in (0, -1) and action.dest not in ZERO_IS_A_VALUE:
            if not re.search(rf"(?<![\w.-]){int(default)}(\.0)?\s*(=|:|means)", action.help):
                unexplained.append(f"{flag}: {text}")
    assert not doubled, f"rpo-jax {name}: help says its default twice: {doubled}"
    assert not unexplained, f"rpo-jax {name}: default {{0, -1}} without saying what it means: {unexplained}"


@pytest.mark.parametrize(
    "argv",
    [
        ["build-pairs", "--recipe", "rpo", "--input", "in.jsonl", "--output", "out"],
        ["build-instructions", "--output", "out", "--num-train", "-1"],
        ["serve", "--model", "no-such-model"],
        ["eval", "--suite", "pairs"],
        ["bench", "--steps", "2"],
    ],
    ids=lambda argv: argv[0],
)
def test_user_errors_name_the_command_once(argv, tmp_path, monkeypatch, capsys):
    """The CLI prefixes 'rpo-jax <command>: error: '; the message itself does not name the command again."""
    from rpo_jax.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    message = err.removeprefix(f"rpo-jax {argv[0]}: error: ")
    assert message != err and len(err.strip().splitlines()) == 1, err
    assert not message.startswith(("rpo-jax", f"{argv[0]}:", f"{argv[0]} ")), err


def test_version_flag():
    result = subprocess.run([sys.executable, "-m", "rpo_jax.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and re.fullmatch(r"rpo-jax \S+\n", result.stdout), result


def test_precompute_ref_is_in_the_readme_command_table():
    from rpo_jax.cli import COMMANDS

    rows = [line.split("|")[1] for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`(?:rpo-jax )?([a-z-]+)", row)}
    assert set(COMMANDS) - listed == set()


def test_base_yaml_header_states_the_path_rule():
    header = BASE.read_text().split("\nmodel:")[0]
    assert "read from the repository root" in header and "current directory" in header
    assert issubclass(ConfigError, UserError)
