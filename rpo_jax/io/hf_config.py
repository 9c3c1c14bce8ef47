"""`ModelConfig` <-> HuggingFace Llama `config.json`, rejecting anything our Llama cannot represent exactly.

Accepts transformers-v5 `rope_parameters` and the legacy `rope_theta` + `rope_scaling` pair. Architecture
features we do not implement (biases, sliding window, MoE, other activations, other RoPE types, quantized
weights) raise `HFConfigError` naming the file and the field rather than being dropped. Fields that do not
change the forward pass (e.g. `use_cache`, `transformers_version`) are listed in `IGNORED_FIELDS`; any other
unknown field is logged as a warning so nothing disappears silently.
"""

from __future__ import annotations

import logging
from typing import Any

from data_pipeline.errors import UserError
from rpo_jax.config.schema import ConfigError, ModelConfig, RopeConfig

log = logging.getLogger(__name__)


class HFConfigError(UserError, ValueError):
    """A HuggingFace config.json describes a model this Llama implementation cannot load exactly."""


# HF field -> ModelConfig field, copied as-is.
DIRECT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "initializer_range",
)
# Fields with no effect on the forward pass of an eval/training step as we run it.
IGNORED_FIELDS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "pad_token_id",
        "pretraining_tp",
        "_name_or_path",
        "is_llama_config",
        "transformers.js_config",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "tie_encoder_decoder",
        "chunk_size_feed_forward",
    }
)
# Field -> value it must have (absent is fine); anything else is an architecture we do not implement.
REQUIRED_VALUES: dict[str, Any] = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "rope_interleaved": False,
    "attention_dropout": 0.0,
    "sliding_window": None,
    "use_sliding_window": False,
}
# Fields whose mere (non-null) presence means another architecture or a weight format we do not load.
FORBIDDEN_FIELDS = (
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "n_routed_experts",
    "n_shared_experts",
    "quantization_config",
    "layer_types",
    "no_rope_layers",
    "attention_chunk_size",
)
ROPE_FIELDS = (
    "rope_type",
    "rope_theta",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)
HF_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def _rope_from_hf(raw: dict, where: str) -> RopeConfig:
    params = raw.get("rope_parameters")
    if params is None:
        # Legacy layout: theta at top level, optional scaling dict (HF v4 also spelled rope_type as `type`).
        params = dict(raw.get("rope_scaling") or {})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        params.setdefault("rope_type", "default")
        params["rope_theta"] = raw.get("rope_theta", 10000.0)
    elif not isinstance(params, dict):
        raise HFConfigError(f"{where}: field rope_parameters must be a mapping, got {params!r}")
    params = dict(params)
    rope_type = params.get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        raise HFConfigError(
            f"{where}: field rope_parameters.rope_type={rope_type!r} is not supported (only 'default' and 'llama3')"
        )
    if rope_type == "default":
        # Other keys (e.g. a stale `factor`) have no effect in HF for default RoPE either.
        return RopeConfig(rope_type="default", rope_theta=float(params.get("rope_theta", 10000.0)))
    unknown = sorted(set(params) - set(ROPE_FIELDS))
    if unknown:
        raise HFConfigError(f"{where}: field rope_parameters has unsupported keys {unknown}")
    missing = sorted(set(ROPE_FIELDS) - set(params))
    if missing:
        raise HFConfigError(f"{where}: field rope_parameters (llama3) lacks {missing}")
    return RopeConfig(
        rope_type="llama3",
        rope_theta=float(params["rope_theta"]),
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def _token_id(raw: dict, field: str, where: str, default: int) -> int:
    value = raw.get(field)
    if value is None:
        return default
    if isinstance(value, list):
        if not value:
            return default
        # ModelConfig holds one id; the full list stays in generation_config.json, which export copies.
        if len(value) > 1:
            log.warning("%s: field %s has %d ids %s; using the first, %d", where, field, len(value), value, value[0])
        return int(value[0])
    return int(value)


def model_config_from_hf(
    raw: dict,
    where: str = "config.json",
    *,
    param_dtype: str | None = None,
    dtype: str | None = None,
    scan_layers: bool = True,
    remat_policy: str = "none",
) -> ModelConfig:
    """ModelConfig from a HF Llama config dict. `where` names the file in error messages.

    `param_dtype`/`dtype` default to the checkpoint's `dtype` (`torch_dtype`) when that is float32 or
    bfloat16, else float32.
    """
    model_type = raw.get("model_type")
    if model_type != "llama":
        raise HFConfigError(f"{where}: field model_type={model_type!r}; only 'llama' is supported")
    archs = raw.get("architectures")
    if archs is not None and list(archs) != ["LlamaForCausalLM"]:
        raise HFConfigError(f"{where}: field architectures={archs!r}; only ['LlamaForCausalLM'] is supported")
    for field, wanted in REQUIRED_VALUES.items():
        if field in raw and raw[field] != wanted and not (wanted is None and raw[field] in (None, 0)):
            raise HFConfigError(f"{where}: field {field}={raw[field]!r} is not supported (needs {wanted!r})")
    for field in FORBIDDEN_FIELDS:
        if raw.get(field) not in (None, 0, [], {}):
            raise HFConfigError(f"{where}: field {field}={raw[field]!r} describes an unsupported architecture")
    known = (
        set(DIRECT_FIELDS)
        | IGNORED_FIELDS
        | set(REQUIRED_VALUES)
        | set(FORBIDDEN_FIELDS)
        | {
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "tie_word_embeddings",
            "rope_parameters",
            "rope_theta",
            "rope_scaling",
            "bos_token_id",
            "eos_token_id",
        }
    )
    unknown = sorted(set(raw) - known)
    if unknown:
        log.warning("%s: ignoring fields with no counterpart in ModelConfig: %s", where, unknown)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if field not in raw:
            raise HFConfigError(f"{where}: required field {field} is missing")
    checkpoint_dtype = HF_DTYPES.get(str(raw.get("dtype", raw.get("torch_dtype"))), "float32")
    heads = raw["num_attention_heads"]
    kwargs = {f: raw[f] for f in DIRECT_FIELDS if f in raw}
    try:
        return ModelConfig(
            **kwargs,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            # HF's own default when the field is absent (ours differs: 1e-5).
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope_parameters=_rope_from_hf(raw, where),
            bos_token_id=_token_id(raw, "bos_token_id", where, ModelConfig.bos_token_id),
            eos_token_id=_token_id(raw, "eos_token_id", where, ModelConfig.eos_token_id),
            param_dtype=param_dtype or checkpoint_dtype,
            dtype=dtype or param_dtype or checkpoint_dtype,
            scan_layers=scan_layers,
            remat_policy=remat_policy,
        )
    except ConfigError as e:
        raise HFConfigError(f"{where}: {e}") from e


def model_config_to_hf(cfg: ModelConfig, dtype: str | None = None) -> dict:
    """HF `config.json` dict loadable by `transformers.LlamaConfig` (v5 `rope_parameters`; `torch_dtype` too)."""
    rope = cfg.rope_parameters
    if rope.rope_type == "default":
        rope_parameters = {"rope_type": "default", "rope_theta": rope.rope_theta}
    else:
        rope_parameters = {f: getattr(rope, f) for f in ROPE_FIELDS}
    dtype = dtype or cfg.param_dtype
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": rope_parameters,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
    }
