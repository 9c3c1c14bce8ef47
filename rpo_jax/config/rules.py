"""The allowed range of every numeric setting, checked when a config is read (before any data, compile or
training work), so an impossible value fails with its setting's name instead of as a crash or a silent no-op
later (`--steps 0` exporting random weights, a negative learning rate climbing the loss, `save_every: 0`
dividing by zero after compiling).

A rule is an interval in the usual notation: `[1, inf)` is >= 1, `(0, inf)` is > 0, `[0, 1)` is 0 <= x < 1.
NaN never satisfies a rule. Settings whose range depends on another setting (token ids below the vocabulary
size, RoPE's high_freq_factor above low_freq_factor, ...) are checked beside their dataclass in schema.py;
mesh axis sizes (positive or -1) there too.
"""

from __future__ import annotations

import dataclasses
import math

from data_pipeline.errors import UserError
from data_pipeline.files import url_path_problem
from data_pipeline.storage import storage_path_problem

# The one non-numeric choice kept here so schema.py stays short: data.packing (data_pipeline.records.packing).
PACKING_CHOICES = ("none", "packed", "packed_shared_prompt")
POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, UNIT, UNIT_OPEN = "(0, inf)", "[0, inf)", "[1, inf)", "[0, 1]", "[0, 1)"

BOUNDS: dict[str, dict[str, str]] = {
    "model": {
        "vocab_size": AT_LEAST_ONE,
        "hidden_size": AT_LEAST_ONE,
        "intermediate_size": AT_LEAST_ONE,
        "num_hidden_layers": AT_LEAST_ONE,
        "num_attention_heads": AT_LEAST_ONE,
        "num_key_value_heads": AT_LEAST_ONE,
        "head_dim": AT_LEAST_ONE,
        "rms_norm_eps": POSITIVE,
        "max_position_embeddings": AT_LEAST_ONE,
        "initializer_range": POSITIVE,
        "mlp_chunk_size": NON_NEGATIVE,  # 0 = whole rows
    },
    "model.rope_parameters": {
        "rope_theta": POSITIVE,
        "factor": POSITIVE,
        "low_freq_factor": POSITIVE,
        "high_freq_factor": POSITIVE,
        "original_max_position_embeddings": AT_LEAST_ONE,
    },
    "lora": {"rank": NON_NEGATIVE, "alpha": POSITIVE, "dropout": UNIT_OPEN, "quantization_block_size": AT_LEAST_ONE},
    "mesh": {"dcn_data": AT_LEAST_ONE, "max_replicated_fraction": UNIT},
    "data": {
        "max_length": "[2, inf)",
        "global_batch_size": AT_LEAST_ONE,
        "shuffle_seed": NON_NEGATIVE,
        "num_workers": NON_NEGATIVE,
    },
    "loss": {
        "beta": POSITIVE,
        "label_smoothing": "[0, 0.5)",
        "rpo_gamma": NON_NEGATIVE,
        "simpo_gamma": NON_NEGATIVE,
        "logits_chunk_size": AT_LEAST_ONE,
        "vocab_chunk_size": NON_NEGATIVE,
    },
    "optim": {
        "learning_rate": POSITIVE,
        "warmup_ratio": UNIT,
        "adam_b1": UNIT_OPEN,
        "adam_b2": UNIT_OPEN,
        "adam_eps": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "max_grad_norm": NON_NEGATIVE,
    },
    "train": {
        "steps": AT_LEAST_ONE,
        "grad_accum_steps": AT_LEAST_ONE,
        "seed": NON_NEGATIVE,
        "log_every": AT_LEAST_ONE,
        "eval_every": NON_NEGATIVE,
        "max_consecutive_nonfinite": AT_LEAST_ONE,
    },
    "checkpoint": {"save_every": AT_LEAST_ONE, "save_every_minutes": NON_NEGATIVE, "keep_last": AT_LEAST_ONE},
}
# Numeric settings checked beside their dataclass instead (their range depends on another value).
CHECKED_WITH_OTHERS = {"mesh.data", "mesh.fsdp", "mesh.tensor", "model.bos_token_id", "model.eos_token_id"}


def _parse(rule: str) -> tuple[float, float, bool, bool]:
    """'[0, 1)' -> (0.0, 1.0, low_closed=True, high_closed=False)."""
    low, high = (part.strip() for part in rule[1:-1].split(","))
    return float(low), float(high), rule[0] == "[", rule[-1] == "]"


def out_of_bounds(value: float, rule: str) -> bool:
    low, high, low_closed, high_closed = _parse(rule)
    if isinstance(value, float) and math.isnan(value):
        return True
    above_low = value >= low if low_closed else value > low
    below_high = value <= high if high_closed else value < high
    return not (above_low and below_high)


def describe(rule: str) -> str:
    """'[1, inf)' -> '>= 1'; '[0, 1)' -> 'in [0, 1)'."""
    low, high, low_closed, _ = _parse(rule)
    if math.isinf(high):
        return f"{'>=' if low_closed else '>'} {low:g}"
    return f"in {rule}"


def bound_problems(section: str, values: dict) -> list[str]:
    """'section.name must be >= 1, got 0' for each value of `section` outside its rule."""
    return [
        f"{section}.{name} must be {describe(rule)}, got {values[name]}"
        for name, rule in BOUNDS.get(section, {}).items()
        if out_of_bounds(values[name], rule)
    ]


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown, or of the wrong type."""


def check_bounds(section: str, settings) -> None:
    """Raises ConfigError naming the first numeric setting of `section` outside its range (config_rules)."""
    problems = bound_problems(section, dataclasses.asdict(settings))
    if problems:
        raise ConfigError(problems[0])


def check_local_path(path: str, setting: str) -> str:
    """Returns `path`; raises ConfigError naming `setting` (e.g. data.tokenizer_path) when it is a URL: what reads
    it opens local files only (see `data_pipeline.files`)."""
    problem = url_path_problem(path)
    if problem:
        raise ConfigError(f"{setting}={problem}")
    return path


def check_storage_path(path: str, setting: str) -> str:
    """Returns `path`, a local path or a gs:// URL; raises ConfigError naming `setting` (e.g. train.output_dir)
    for any other URL (see `data_pipeline.storage`)."""
    problem = storage_path_problem(path)
    if problem:
        raise ConfigError(f"{setting}={problem}")
    return path
