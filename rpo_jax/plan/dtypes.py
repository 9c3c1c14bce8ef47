"""What `rpo-jax plan` says about precision, and how it compiles a bfloat16 program on CPU.

XLA:CPU has no bfloat16 arithmetic: it widens bf16 values to float32 around most ops and at while-loop boundaries,
so a layer-scanned bf16 model compiled for CPU holds float32 copies of its stacked weights and of the saved layer
inputs, which no GPU or TPU allocates (measured, jax 0.10.2: Llama-3.1-8B LoRA, 16 rows of 4096 tokens: 87 GiB of
temporaries as bfloat16, 38 GiB with float16 in its place; docs/benchmarks.md). float16 has bfloat16's width and
XLA:CPU keeps it narrow, so plan compiles the lowered program with every bf16 type renamed to f16: the same
program with the same buffer sizes as on a bf16-native chip (nothing is executed, so the narrower range does not
matter). XLA:CPU still computes dots in float32, so the CPU figure remains an upper bound for a GPU.
`rpo-jax plan --exact-dtypes` compiles the types as configured.
"""

from __future__ import annotations

import re

from jax._src.lib.mlir import ir

from rpo_jax.config.schema import Config
from rpo_jax.train.policy import reference_dtype

# A bf16 element type in StableHLO text: `tensor<4x8xbf16>`, `tensor<bf16>`, `: bf16` (not inside identifiers).
BF16_TYPE = re.compile(r"(?<=[x<\s(,:])bf16(?![A-Za-z0-9_])")


def compile_for_plan(lowered, platform: str, exact_dtypes: bool):
    """(compiled, how it was compiled). Renames bf16 to f16 in the lowered module on CPU (see the module
    docstring); jax 0.10.2 keeps the module in `Lowered._lowering._hlo`, which `compile()` reads."""
    computation = lowered._lowering
    text = str(computation._hlo)
    if exact_dtypes or platform != "cpu" or not BF16_TYPE.search(text):
        return lowered.compile(), "as configured"
    with computation._hlo.context:
        computation._hlo = ir.Module.parse(BF16_TYPE.sub("f16", text))
    computation._executable = None
    return lowered.compile(), "bfloat16 as float16 (same width; XLA:CPU widens bf16 to float32)"


def precision(cfg: Config) -> dict:
    """Which dtype holds what (`rpo_jax.train.optim` explains the scheme); the plan report prints it."""
    lora = cfg.lora.rank > 0
    trained = "float32" if lora else cfg.model.param_dtype  # LoRA factors are always float32
    return {
        "trained_weights": trained,  # = gradient and gradient-accumulation dtype
        "frozen_base": frozen_base_dtype(cfg) if lora else None,
        "compute": cfg.model.dtype,
        "adam_moments": cfg.optim.moments_dtype,
        "reference_copy": reference_dtype(cfg) if cfg.train.reference_mode == "separate" else None,
        "master_weights": trained == "float32" and cfg.model.dtype == "bfloat16",
        "loss_scaling": None,  # bf16 has fp32's exponent range; log-softmax and losses are fp32
    }


def frozen_base_dtype(cfg: Config) -> str:
    """How a LoRA run stores its frozen base: `param_dtype`, or QLoRA's codes with their scales' dtype."""
    quantization, block = cfg.lora.base_quantization, cfg.lora.quantization_block_size
    if quantization == "none":
        return cfg.model.param_dtype
    return f"{quantization} (a {cfg.model.param_dtype} scale per {block} inputs; dequantized to {cfg.model.dtype})"


def format_precision(p: dict) -> str:
    weights = "LoRA factors" if p["frozen_base"] else "weights"
    text = f"precision: trained {weights} {p['trained_weights']}"
    text += " (fp32 master weights)" if p["master_weights"] else ""
    text += f", frozen base {p['frozen_base']}" if p["frozen_base"] else ""
    text += f", compute {p['compute']}, gradients {p['trained_weights']}, Adam moments {p['adam_moments']}"
    text += f", reference copy {p['reference_copy']}" if p["reference_copy"] else ""
    text += "; no loss scaling"
    if p.get("compiled_as", "as configured") != "as configured":
        text += f"\n  compiled {p['compiled_as']}: --exact-dtypes compiles bf16 as is"
    if p["trained_weights"] == "bfloat16":
        text += (
            "\n  WARNING: weights are trained in bfloat16 without fp32 master weights (updates below bf16 resolution "
        )
        text += "are lost); set model.param_dtype=float32"
    return text
