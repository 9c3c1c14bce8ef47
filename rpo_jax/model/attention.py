"""Attention implementations behind one call, chosen by `model.attention` (auto | xla | blockwise | cudnn | splash).

What may attend to what is described by an `AttentionMask`: causal, and only within the same segment id (0 =
padding, which sees earlier padding only, so no row is empty). Every implementation computes exactly that for
real tokens; each one maps it to what its kernel takes:

- `xla`: `jax.nn.dot_product_attention(implementation="xla")` with the dense `[B, 1, T, S]` boolean mask; it
  materialises float32 `[B, H, T, S]` scores and keeps them for the backward. The reference the others are tested
  against, and what the sampler always uses (`attention_mask` over its KV cache, left-padded prompts).
- `blockwise`: `rpo_jax.model.blockwise_attention`, pure JAX, O(L · block) memory in forward and backward, any backend.
- `cudnn`: cuDNN flash attention via `jax.nn.dot_product_attention(implementation="cudnn")`; right padding is
  passed as per-row sequence lengths, packed rows (`max_segments > 1`) as cuDNN segment offsets
  (`rpo_jax.model.attention_kernels`). bf16/fp16 only, head_dim a multiple of 8 and <= 256.
- `splash`: the Pallas TPU splash-attention kernel with a causal mask and segment ids
  (`rpo_jax.model.attention_kernels`).
- `auto`: cudnn on GPU (blockwise when the compute dtype is float32 or head_dim does not suit cuDNN), splash on
  TPU, blockwise on CPU.

GQA: q has H heads and k/v K heads (H a multiple of K); blockwise, cudnn and splash read the K heads as they are
(no repeat in memory), as does `jax.nn`'s xla path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rpo_jax.config.schema import ConfigError, ModelConfig
from rpo_jax.model.blockwise_attention import DEFAULT_BLOCK, blockwise_attention

PLATFORM_CHOICE = {"gpu": "cudnn", "tpu": "splash", "cpu": "blockwise"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Causal attention within segments for rows [B, L].

    `segment_ids_BL`: 0 = padding; consecutive tokens with the same positive id form one sequence. Today's batches
    are one sequence per row then padding (`max_segments=1`). Packed rows (several sequences each) set
    `max_segments` to the most any row holds: the cuDNN path needs that bound at trace time, the other paths read
    the ids directly. `prefix_ids_BL` (shared prompts, `data.packing=packed_shared_prompt`): a token also sees
    earlier tokens of the segment it names (a response branch sees its prompt); None = its own segment only.
    Only xla and blockwise express that; `attend` raises for cudnn and splash (`shared_prompt_attention`).
    """

    segment_ids_BL: jax.Array
    max_segments: int = dataclasses.field(default=1, metadata=dict(static=True))
    prefix_ids_BL: jax.Array | None = None


# Key/query block of blockwise attention on packed rows (`max_segments` > 1). The kernel skips a block pair only when
# no query of one block may see a key of the other, so blocks must be shorter than the packed sequences (a few
# hundred tokens) for the segment mask to save work: on the default pairs at L=1024 (rows of 2,048) blocks of 128
# made packed steps 1.3x faster than blocks of 512 (docs/benchmarks.md, packing). One-sequence rows keep 512.
PACKED_ROW_BLOCK = 128


def attention_mask(
    segment_ids_BT: jax.Array,
    segment_ids_BS: jax.Array,
    causal_offset: int | jax.Array = 0,
    prefix_ids_BT: jax.Array | None = None,
):
    """Dense boolean [B, 1, T, S]: causal by index, and only within the same segment (0 = padding) or the query's
    prefix segment (`prefix_ids_BT`, shared prompts).

    `causal_offset` is the absolute index of query 0 among the keys (non-zero when decoding with a cache).
    """
    T, S = segment_ids_BT.shape[1], segment_ids_BS.shape[1]
    q_idx = jnp.arange(T)[:, None] + causal_offset
    causal_TS = q_idx >= jnp.arange(S)[None, :]
    same_BTS = segment_ids_BT[:, :, None] == segment_ids_BS[:, None, :]
    if prefix_ids_BT is not None:
        same_BTS = same_BTS | (prefix_ids_BT[:, :, None] == segment_ids_BS[:, None, :])
    return (causal_TS[None] & same_BTS)[:, None]


def xla_attention(q_BTHDh, k_BSKDh, v_BSKDh, mask_B1TS, *, scale: float):
    """The dense reference: explicit mask, float32 scores materialised."""
    return jax.nn.dot_product_attention(q_BTHDh, k_BSKDh, v_BSKDh, mask=mask_B1TS, scale=scale, implementation="xla")


def _cudnn_problem(cfg: ModelConfig) -> str:
    """Why cuDNN flash attention cannot run this model ('' if it can); see jax._src.cudnn.fused_attention_stablehlo."""
    if cfg.dtype != "bfloat16":
        return f"cuDNN flash attention has no {cfg.dtype} kernel (needs model.dtype=bfloat16)"
    if cfg.head_dim % 8 or cfg.head_dim > 256:
        return f"cuDNN flash attention needs head_dim a multiple of 8 and <= 256, got {cfg.head_dim}"
    return ""


def resolve_attention(cfg: ModelConfig, platform: str) -> tuple[str, str]:
    """(implementation to run, why) for `cfg.attention` on devices of `platform` (cpu | gpu | tpu); raises a
    `ConfigError` naming the backend when the chosen implementation cannot run there."""
    name = cfg.attention
    if name == "auto":
        choice = PLATFORM_CHOICE.get(platform, "blockwise")
        if choice == "cudnn" and _cudnn_problem(cfg):
            return "blockwise", f"auto on {platform}: {_cudnn_problem(cfg)}"
        return choice, f"auto on the {platform} backend"
    if name == "cudnn" and platform != "gpu":
        raise ConfigError(f"model.attention=cudnn needs an NVIDIA GPU backend; this one is {platform} (use auto)")
    if name == "cudnn" and _cudnn_problem(cfg):
        raise ConfigError(f"model.attention=cudnn: {_cudnn_problem(cfg)} (blockwise runs in any dtype)")
    if name == "splash" and platform != "tpu":
        raise ConfigError(
            f"model.attention=splash is a TPU Pallas kernel; this backend is {platform} (use auto, or blockwise)"
        )
    return name, "set in model.attention"


def shared_prompt_attention(impl: str) -> str:
    """Why `impl` cannot run shared-prompt rows ('' if it can)."""
    if impl in ("xla", "blockwise"):
        return ""
    return (
        f"data.packing=packed_shared_prompt needs a mask where a response sees its prompt segment, which "
        f"model.attention={impl} cannot express; use model.attention=blockwise (or xla), or data.packing=packed"
    )


def platform_of(mesh: Mesh | None) -> str:
    """The platform the program runs on: the mesh's devices (plan compiles for CPU devices on any host)."""
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def describe_attention(cfg: ModelConfig, mesh: Mesh | None, packing: str = "none") -> str:
    """One line for logs and `rpo-jax plan`: `attention: auto -> cudnn (auto on the gpu backend)`. Shared-prompt
    rows run blockwise where `auto` picked a kernel that cannot mask them (as `LlamaModel.__call__` does; an
    explicit such choice was refused by `batches.check_packing_settings`)."""
    impl, why = resolve_attention(cfg, platform_of(mesh))
    if packing == "packed_shared_prompt" and shared_prompt_attention(impl):
        impl, why = "blockwise", f"{impl} cannot express the shared-prompt mask of data.packing={packing}"
    return f"attention: {cfg.attention} -> {impl} ({why})"


def attend(
    impl: str,
    q_BTHDh,
    k_BTKDh,
    v_BTKDh,
    mask: AttentionMask,
    *,
    scale: float,
    mesh: Mesh | None = None,
    interpret: bool = False,
):
    """Causal self-attention [B, T, H, Dh] with implementation `impl` (already resolved: not auto).

    `mesh` lets kernels that GSPMD cannot partition (splash) run per shard under `shard_map`; `interpret` runs the
    splash kernel in Pallas interpret mode (tests on CPU).
    """
    seg_BT, prefix_BT = mask.segment_ids_BL, mask.prefix_ids_BL
    if impl == "xla":
        return xla_attention(
            q_BTHDh, k_BTKDh, v_BTKDh, attention_mask(seg_BT, seg_BT, prefix_ids_BT=prefix_BT), scale=scale
        )
    if impl == "blockwise":
        block = DEFAULT_BLOCK if mask.max_segments == 1 else PACKED_ROW_BLOCK
        return blockwise_attention(
            q_BTHDh, k_BTKDh, v_BTKDh, seg_BT, scale=scale, prefix_ids_BT=prefix_BT, block_q=block, block_kv=block
        )
    if prefix_BT is not None:
        raise ConfigError(shared_prompt_attention(impl))
    from rpo_jax.model import attention_kernels  # the Pallas/cuDNN modules load only when chosen

    if impl == "cudnn":
        return attention_kernels.cudnn_attention(q_BTHDh, k_BTKDh, v_BTKDh, seg_BT, mask.max_segments, scale=scale)
    if impl == "splash":
        return attention_kernels.splash_attention(
            q_BTHDh, k_BTKDh, v_BTKDh, seg_BT, scale=scale, mesh=mesh, interpret=interpret
        )
    raise ValueError(f"unknown attention implementation {impl!r}")
