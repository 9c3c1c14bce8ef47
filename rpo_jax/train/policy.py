"""Policy / reference parameters: sharded creation, LoRA partition, and the three reference modes.

Parameters travel as pure nested dicts of arrays:
  trainable  - what the optimizer updates (all weights, or only LoRA factors when `lora.rank > 0`);
  frozen     - base weights under LoRA (never updated, never in step checkpoints' optimizer state);
  reference  - a separate frozen copy, only for `train.reference_mode == "separate"`.
`nnx.merge(graphdef, lora, base)` rebuilds the module inside jit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.io.params import is_hf_folder, load_hf_base, restore_params
from rpo_jax.io.quantized_base import load_quantized_base
from rpo_jax.model.attention import platform_of, resolve_attention
from rpo_jax.model.llama import Llama
from rpo_jax.model.remat import check_remat_policy_supported
from rpo_jax.objective.losses import needs_reference
from rpo_jax.runtime.sharding import check_sufficiently_sharded, state_shardings

Params = dict[str, Any]


@dataclasses.dataclass
class PolicyParams:
    graphdef: nnx.GraphDef
    trainable: Params
    frozen: Params
    reference: Params | None
    trainable_shardings: Params
    frozen_shardings: Params
    uses_lora: bool

    def merged_model(self, trainable: Params, frozen: Params) -> Llama:
        """The policy module from (trainable, frozen) dicts (call inside jit)."""
        lora, base = (trainable, frozen) if self.uses_lora else ({}, trainable)
        return nnx.merge(self.graphdef, lora, base)

    def merged_params(self, trainable: Params, frozen: Params) -> Params:
        """One nested dict with every parameter (LoRA factors beside their base weights), as for export."""
        if not self.uses_lora:
            return trainable
        return {**frozen, "layers": {**frozen["layers"], **trainable["layers"]}}

    def reference_model(self, trainable: Params, frozen: Params, reference: Params | None) -> Llama:
        """Module computing reference log-probs (call with use_lora=False): the separate copy, or the LoRA
        model whose adapters are skipped — the same base weights, no second copy."""
        if reference is not None:
            return nnx.merge(self.graphdef, {}, reference)
        return self.merged_model(trainable, frozen)


def reference_dtype(cfg: Config) -> str:
    """Storage dtype of a separate reference copy: the narrower of param_dtype and dtype. The reference is never
    trained and every weight is cast to `model.dtype` where it is used, so fp32 master weights need no fp32 twin:
    a bf16 copy gives the same forward, bit for bit."""
    return "bfloat16" if "bfloat16" in (cfg.model.param_dtype, cfg.model.dtype) else "float32"


def validate_reference_mode(cfg: Config) -> None:
    """Checks the reference mode against LoRA and the losses before anything is built."""
    mode, lora = cfg.train.reference_mode, cfg.lora.rank > 0
    if mode == "lora_base" and not lora:
        raise ConfigError("train.reference_mode=lora_base needs lora.rank > 0")
    if mode == "separate" and lora:
        raise ConfigError(
            "train.reference_mode=separate with lora.rank > 0 would copy the base weights; "
            "use train.reference_mode=lora_base (the base with adapters disabled)"
        )
    if mode == "none" and needs_reference(cfg.loss):
        raise ConfigError(
            f"train.reference_mode=none but loss.loss_type {list(cfg.loss.loss_type)} needs a "
            "reference (only simpo and sft are reference-free)"
        )


@dataclasses.dataclass(frozen=True)
class PolicyLayout:
    """Shapes and shardings of every parameter, known before (or without) creating any array."""

    make: Callable[[], Llama]
    graphdef: nnx.GraphDef
    abstract_lora: nnx.State
    abstract_base: nnx.State
    lora_state_shardings: nnx.State
    base_state_shardings: nnx.State


def policy_layout(cfg: Config, mesh: Mesh) -> PolicyLayout:
    """Validates the reference mode, the remat policy, the attention and the sharding rules; allocates nothing."""
    validate_reference_mode(cfg)
    check_remat_policy_supported(cfg.model.remat_policy, mesh)
    resolve_attention(cfg.model, platform_of(mesh))  # a ConfigError naming the backend, before any compile

    def make():
        return Llama(cfg.model, cfg.lora, rngs=nnx.Rngs(params=cfg.train.seed))

    abstract = nnx.eval_shape(make)
    graphdef, abstract_lora, abstract_base = nnx.split(abstract, nnx.LoRAParam, ...)
    _, abstract_all = nnx.split(abstract)
    check_sufficiently_sharded(
        abstract_all, state_shardings(abstract_all, mesh), mesh, cfg.mesh.max_replicated_fraction
    )
    return PolicyLayout(
        make,
        graphdef,
        abstract_lora,
        abstract_base,
        state_shardings(abstract_lora, mesh),
        state_shardings(abstract_base, mesh),
    )


def _assemble(cfg: Config, layout: PolicyLayout, lora: Params, base: Params, reference: Params | None) -> PolicyParams:
    uses_lora = cfg.lora.rank > 0
    lora_sh, base_sh = layout.lora_state_shardings.to_pure_dict(), layout.base_state_shardings.to_pure_dict()
    return PolicyParams(
        graphdef=layout.graphdef,
        trainable=lora if uses_lora else base,
        frozen=base if uses_lora else {},
        reference=reference,
        trainable_shardings=lora_sh if uses_lora else base_sh,
        frozen_shardings=base_sh if uses_lora else {},
        uses_lora=uses_lora,
    )


def abstract_policy(cfg: Config, mesh: Mesh) -> PolicyParams:
    """`PolicyParams` whose leaves are `jax.ShapeDtypeStruct`s carrying their shardings: what `build_policy`
    would create, for lowering/compiling the train step (`rpo-jax plan`) without allocating parameters."""
    layout = policy_layout(cfg, mesh)

    def shaped(abstract_state: nnx.State, shardings: nnx.State) -> Params:
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state.to_pure_dict(),
            shardings.to_pure_dict(),
        )

    lora = shaped(layout.abstract_lora, layout.lora_state_shardings)
    base = shaped(layout.abstract_base, layout.base_state_shardings)
    reference = None
    if cfg.train.reference_mode == "separate":
        dtype = jnp.dtype(reference_dtype(cfg))
        reference = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding), base)
    return _assemble(cfg, layout, lora, base, reference)


def build_policy(cfg: Config, mesh: Mesh, init_checkpoint: str = "") -> PolicyParams:
    """Creates policy (+ reference) parameters directly in their shardings.

    `init_checkpoint`, when given, supplies the non-LoRA weights, read straight into their shardings: a params
    checkpoint (`rpo-jax import-hf` / `params_io.save_params`; names, shapes and dtypes must match), or an HF
    Llama folder such as a trained run's `hf/` (its config.json must describe `cfg.model`'s architecture; the
    weights are cast to `cfg.model.param_dtype`). With `lora.base_quantization` the base is quantized as it is
    read (`io.quantized_base`). LoRA factors are always freshly initialised (B = 0, so policy == base at step 0).
    """
    layout = policy_layout(cfg, mesh)
    lora_sh, base_sh = layout.lora_state_shardings.to_pure_dict(), layout.base_state_shardings.to_pure_dict()

    def create(part: int):
        # Each call builds the whole module but returns one part; XLA drops the unused initialisers, so a
        # restored base is never also randomly initialised in device memory.
        return nnx.split(layout.make(), nnx.LoRAParam, ...)[part].to_pure_dict()

    lora = jax.jit(lambda: create(1), out_shardings=lora_sh)()
    if init_checkpoint and cfg.lora.base_quantization != "none":  # quantized layer by layer as it is read
        base = load_quantized_base(
            init_checkpoint, cfg.model, cfg.lora, layout.abstract_base, layout.base_state_shardings
        )
    elif init_checkpoint and is_hf_folder(init_checkpoint):
        base = load_hf_base(init_checkpoint, cfg.model, mesh).to_pure_dict()
        base = jax.device_put(base, base_sh)  # a no-op: load_hf_state already placed them in these shardings
    elif init_checkpoint:
        base = restore_params(init_checkpoint, layout.abstract_base, layout.base_state_shardings).to_pure_dict()
    else:
        base = jax.jit(lambda: create(2), out_shardings=base_sh)()
    reference = None
    if cfg.train.reference_mode == "separate":
        # A real copy (not an alias): the policy buffers are donated to the step and updated in place.
        dtype = jnp.dtype(reference_dtype(cfg))
        reference = jax.jit(lambda t: jax.tree.map(lambda x: jnp.copy(x).astype(dtype), t), out_shardings=base_sh)(base)
    return _assemble(cfg, layout, lora, base, reference)
