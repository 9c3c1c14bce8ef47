"""Model FLOPs per train step (docs/algorithms.md §7) and published chip peaks: what MFU is measured against.

Model FLOPs count the useful work only (remat recomputation excluded), over the real (non-pad) tokens of every row:

    F(T) = 2·N·T + 2·layers·d_attn·T²       forward FLOPs of one row of T tokens (causal attention)

with N the matmul parameters including the LM head and excluding the embedding, d_attn = heads·head_dim.
Full fine-tune: policy forward+backward 3F, inline reference forward +1F. LoRA: policy ≈ 2F (no weight gradients).
"""

from __future__ import annotations

import math

import numpy as np

from rpo_jax.config.schema import ModelConfig
from rpo_jax.model.llama import layer_weight_shapes

# Published dense bf16 peaks (TFLOP/s per chip), docs/algorithms.md §7; matched against `device.device_kind`.
CHIP_PEAK_BF16_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def matmul_params(cfg: ModelConfig) -> int:
    """N: every matmul weight of the decoder plus the LM head (tied or not); embedding lookups are not matmuls."""
    per_layer = sum(math.prod(shape) for shape in layer_weight_shapes(cfg).values())
    return cfg.num_hidden_layers * per_layer + cfg.hidden_size * cfg.vocab_size


def forward_flops(cfg: ModelConfig, row_lengths: np.ndarray) -> float:
    """Σ over rows of F(T) for the given real (non-pad) row lengths."""
    T = np.asarray(row_lengths, np.float64)
    d_attn = cfg.num_attention_heads * cfg.head_dim
    return float(np.sum(2.0 * matmul_params(cfg) * T + 2.0 * cfg.num_hidden_layers * d_attn * T * T))


def step_flop_units(reference_mode: str, uses_lora: bool) -> int:
    """Multiples of F per step: policy 3F (2F under LoRA) plus 1F for an inline reference forward."""
    policy = 2 if uses_lora else 3
    return policy + (1 if reference_mode in ("separate", "lora_base") else 0)


def chip_peak_flops(device_kind: str, dtype: str) -> float | None:
    """Published peak (FLOP/s) for bf16 on a known accelerator; None on CPU, unknown chips, or fp32."""
    if dtype != "bfloat16":
        return None
    for name, tflops in CHIP_PEAK_BF16_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return None
