"""The accelerator kernels behind `model.attention=cudnn` and `=splash` (see `rpo_jax.model.attention` for the mask).

cuDNN (jax 0.10.2, `jax._src.cudnn.fused_attention_stablehlo`): causal masking is built in; padding is given as
per-row sequence lengths (`PADDING_CAUSAL`), packed sequences as segment offsets + lengths (cuDNN's ragged
layout, Hopper or newer). It takes no segment-id array, so the mask's segment ids are turned into those. A dense
mask would also be accepted, but jax turns it into a `[B, 1, T, S]` bias, which is what this module avoids.
Padding positions (id 0) come back as zeros; nothing reads them (their keys are masked for every real query and
the loss never scores them).

Splash (`jax.experimental.pallas.ops.tpu.splash_attention`): `make_splash_mha` with a causal `MultiHeadMask` and
`SegmentIds`, vmapped over the batch, with MaxText's default block sizes (512 for every forward and backward
block, unfused backward, head-dim-minor layouts), reduced to 256 or 128 when the padded row length is not a
multiple of 512. GQA runs natively (K/V heads < query heads). The kernel does not scale scores, so q is scaled
first, as MaxText does. Pallas calls cannot be partitioned by GSPMD, so with a mesh the kernel runs per shard
under `shard_map` (batch over the batch axes, heads over `tensor` when they divide).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from rpo_jax.runtime.sharding import BATCH_AXES

SPLASH_BLOCK = 512  # MaxText sa_block_* defaults
LANE = 128  # TPU lane width: splash blocks are multiples of it


def _segment_offsets(seg_BT: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """(lengths [B, M], starts [B, M + 1]) of each row's contiguous non-zero segments, -1 where a row has fewer."""
    before = jnp.pad(seg_BT[:, :-1], ((0, 0), (1, 0)))
    is_start = (seg_BT != 0) & (seg_BT != before)
    starts = jax.vmap(lambda row: jnp.nonzero(row, size=max_segments, fill_value=-1)[0])(is_start)
    ids = jnp.take_along_axis(seg_BT, jnp.maximum(starts, 0), axis=1)
    lengths = jnp.sum(seg_BT[:, None, :] == ids[:, :, None], axis=-1, dtype=jnp.int32)
    lengths = jnp.where(starts >= 0, lengths, -1).astype(jnp.int32)
    starts = jnp.pad(starts, ((0, 0), (0, 1)), constant_values=-1).astype(jnp.int32)
    return lengths, starts


def cudnn_attention(q_BTHDh, k_BTKDh, v_BTKDh, seg_BT, max_segments: int, *, scale: float):
    """cuDNN flash attention for `AttentionMask(seg_BT, max_segments)` (see the module docstring)."""
    real_BT = seg_BT != 0
    if max_segments == 1:
        lengths_B = jnp.sum(real_BT, axis=1, dtype=jnp.int32)
        out = jax.nn.dot_product_attention(
            q_BTHDh,
            k_BTKDh,
            v_BTKDh,
            scale=scale,
            is_causal=True,
            query_seq_lengths=lengths_B,
            key_value_seq_lengths=lengths_B,
            implementation="cudnn",
        )
    else:
        from jax._src.cudnn import fused_attention_stablehlo as cudnn

        lengths, starts = _segment_offsets(seg_BT, max_segments)
        out = cudnn.dot_product_attention(
            q_BTHDh,
            k_BTKDh,
            v_BTKDh,
            q_seqlen=lengths,
            kv_seqlen=lengths,
            q_offsets=starts,
            kv_offsets=starts,
            scale=scale,
            mask_type=cudnn.MaskType.PADDING_CAUSAL,
            qkv_layout="BTNH",
        )
    return jnp.where(real_BT[:, :, None, None], out, 0).astype(q_BTHDh.dtype)


def _splash_block(length: int) -> int:
    for block in (SPLASH_BLOCK, 2 * LANE, LANE):
        if length % block == 0:
            return block
    raise AssertionError(f"row length {length} is not a multiple of {LANE}")


def _splash_per_shard(q_BHTD, k_BKTD, v_BKTD, seg_BT, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    heads, length = q_BHTD.shape[1], q_BHTD.shape[2]
    block = _splash_block(length)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * heads)
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    segments = splash.SegmentIds(q=seg_BT, kv=seg_BT)
    return jax.vmap(kernel)(q_BHTD, k_BKTD, v_BKTD, segment_ids=segments)


def splash_attention(q_BTHDh, k_BTKDh, v_BTKDh, seg_BT, *, scale: float, mesh: Mesh | None, interpret: bool = False):
    """Splash attention for `AttentionMask(seg_BT)`; rows are padded to a multiple of 128 with segment id -1."""
    B, T, H, Dh = q_BTHDh.shape
    K = k_BTKDh.shape[2]
    pad = -T % LANE

    def to_heads_major(x):  # [B, T, N, Dh] -> [B, N, T + pad, Dh]
        return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, pad), (0, 0)))

    q = to_heads_major((q_BTHDh * jnp.asarray(scale, q_BTHDh.dtype)).astype(q_BTHDh.dtype))
    k, v = to_heads_major(k_BTKDh), to_heads_major(v_BTKDh)
    seg = jnp.pad(seg_BT.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=-1)

    def run(q, k, v, seg):
        return _splash_per_shard(q, k, v, seg, interpret)

    if mesh is not None and mesh.devices.size > 1:
        tensor = mesh.shape["tensor"]
        heads_axis = "tensor" if H % tensor == 0 and K % tensor == 0 else None
        qkv_spec = PartitionSpec(BATCH_AXES, heads_axis, None, None)
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(qkv_spec, qkv_spec, qkv_spec, PartitionSpec(BATCH_AXES, None)),
            out_specs=qkv_spec,
            check_vma=False,
        )
    out_BHTD = run(q, k, v, seg)
    return jnp.swapaxes(out_BHTD[:, :, :T], 1, 2)
