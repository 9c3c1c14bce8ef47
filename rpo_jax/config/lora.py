"""The `lora` section: adapters, and QLoRA's quantized frozen base (`rpo_jax.model.quantization` implements it).

Its own module so that schema.py stays within the module size limit; `rpo_jax.config.schema` re-exports it.
"""

from __future__ import annotations

import dataclasses

from rpo_jax.config.rules import ConfigError, check_bounds

LORA_TARGET_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
# How the frozen base's seven linear maps are stored under LoRA: as configured (`none`), or as qwix codes with one
# absmax scale per block of `quantization_block_size` input elements: int8, or nf4 (QLoRA's 4-bit NormalFloat).
BASE_QUANTIZATIONS = ("none", "int8", "nf4")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters; with `rank == 0` the full model is trained. `base_quantization` stores the frozen base
    quantized (QLoRA), so it needs adapters: a quantized model cannot itself be trained."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGET_NAMES
    base_quantization: str = "none"
    quantization_block_size: int = 64

    def __post_init__(self):
        bad = set(self.target_modules) - set(LORA_TARGET_NAMES)
        if bad:
            raise ConfigError(f"lora.target_modules: unknown {sorted(bad)}; allowed {sorted(LORA_TARGET_NAMES)}")
        if self.base_quantization not in BASE_QUANTIZATIONS:
            raise ConfigError(
                f"lora.base_quantization must be one of {', '.join(BASE_QUANTIZATIONS)}, got {self.base_quantization!r}"
            )
        check_bounds("lora", self)
        if self.rank > 0 and not self.target_modules:
            raise ConfigError("lora.target_modules is empty but lora.rank > 0: no layer would get adapters")
        if self.base_quantization != "none" and self.rank == 0:
            raise ConfigError(
                f"lora.base_quantization={self.base_quantization} quantizes the frozen base under LoRA adapters, but "
                "lora.rank is 0 (the whole model would be trained, and quantized weights cannot be): set lora.rank "
                "> 0 or lora.base_quantization=none"
            )
