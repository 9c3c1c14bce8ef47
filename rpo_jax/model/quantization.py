"""QLoRA's frozen base (`lora.base_quantization`): the seven linear maps of every layer stored quantized through
`qwix` (Google's JAX quantization library), computed in `model.dtype`, the LoRA factors beside them unchanged.

Why qwix's quantized arrays and not its model-rewriting providers (`QtProvider`, `PtqProvider`, `LoraProvider`):
the providers intercept `dot_general`/`einsum` calls inside Flax modules and find the weight among the calling
module's own parameters by identity (`qwix._src.utils.flax_util.find_param`). Our weights are stacked along a
leading `layers` axis and sliced by `lax.scan`, so a provider sees a slice it cannot match; `LoraProvider` would also
bring adapters of its own beside ours (PEFT's init, dropout, the merge on export, logical axes for sharding). What
qwix supplies here is the numerics: `qwix.quantize` (absmax calibration per block, rounding, int8 saturation, nf4's
codebook from the QLoRA paper, Appendix E) into a `qwix.QArray`, and `qwix.dequantize`.

Layout. A quantized weight [Y, *in, *out] is a `QuantizedWeight` holding two arrays: `codes` (qwix's qvalue: int8,
or nf4's 4-bit indices into its 16 values packed two per uint8 along the blocked axis) and `scale`, one per block of
`lora.quantization_block_size` consecutive elements of the last input axis, for every layer, other input index and
output column ([Y, ..., in_last / block, *out], stored in `model.param_dtype`). Both carry the weight's logical axes,
so `runtime.sharding`'s rules table shards them as it shards the dense weight (and raises the same way on an unknown
name or a dimension that does not divide its mesh axis). A block then never straddles two shards, so every device
quantizes its own shard (`rpo_jax.io.quantized_base` builds the base that way, one layer at a time). nf4 is packed
by hand rather than stored as qwix's uint4: XLA:CPU widens a stacked uint4 operand of the layer scan to one byte
per code in front of the loop (a second, unpacked copy of every layer's codes: +0.8 GiB per 70B layer in
`rpo-jax plan`), while uint8 bytes are sliced per layer and unpacked inside it.

The matmul. For floating-point activations `qwix.einsum` takes its dequantize-then-matmul path (nf4 always: a
codebook cannot be applied after the matmul), which XLA fuses; `frozen_matmul` makes that path explicit so that the
weight goes storage -> scale dtype -> `model.dtype` exactly as a dense weight goes param dtype -> `model.dtype`: the
quantized forward is the dense forward on `dequantize(q)` (tests/test_qlora.py). It runs under `jax.checkpoint` so
the backward recomputes the dequantized layer instead of keeping it (without remat JAX would keep every layer's,
a dense copy of the model: measured on CPU). Log-softmax and losses are untouched (fp32, chunked).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from rpo_jax.config.schema import ConfigError, LoraConfig

# lora.base_quantization -> qwix's qtype, the bits one code takes in memory, and the dtype its codes are stored in
# (nf4 packed two codes per byte: that dtype says which quantization a stored weight is, with no side channel).
QTYPES = {"int8": jnp.int8, "nf4": "nf4"}
CODE_BITS = {"int8": 8, "nf4": 4}
STORAGE_DTYPES = {"int8": np.dtype(np.int8), "nf4": np.dtype(np.uint8)}


def _pack_nibbles(codes: jax.Array, axis: int) -> jax.Array:
    """nf4 codes (0..15) two per uint8 along `axis`: element 2k in the low nibble, 2k + 1 in the high one."""
    axis %= codes.ndim
    pairs = codes.astype(jnp.uint8).reshape(*codes.shape[:axis], codes.shape[axis] // 2, 2, *codes.shape[axis + 1 :])
    return jnp.take(pairs, 0, axis=axis + 1) | (jnp.take(pairs, 1, axis=axis + 1) << 4)


def _unpack_nibbles(packed: jax.Array, axis: int) -> jax.Array:
    axis %= packed.ndim
    both = jnp.stack([packed & 15, packed >> 4], axis=axis + 1)
    return both.reshape(*packed.shape[:axis], 2 * packed.shape[axis], *packed.shape[axis + 1 :])


@flax.struct.dataclass
class QuantizedArray:
    """A quantized weight as stored and as the layer scan slices it: `codes` (int8; nf4 packed two per uint8 along
    the blocked axis) and `scale` (one per block, same rank). `block_axis` counts from the end, so it stays right
    for one layer of a stacked weight."""

    codes: jax.Array
    scale: jax.Array
    quantization: str = flax.struct.field(pytree_node=False)
    block_axis: int = flax.struct.field(pytree_node=False)

    def __getitem__(self, index) -> QuantizedArray:
        return jax.tree.map(lambda x: x[index], self)

    def qarray(self) -> qwix.QArray:
        codes = self.codes if self.quantization == "int8" else _unpack_nibbles(self.codes, self.block_axis)
        return qwix.QArray(codes, self.scale, qtype=QTYPES[self.quantization])

    def dense(self) -> jax.Array:
        """`qwix.dequantize`: the weight in the scale's dtype."""
        return qwix.dequantize(self.qarray())


def quantize_blocks(dense: jax.Array, block_axis: int, lora: LoraConfig, scale_dtype) -> QuantizedArray:
    """`dense` quantized from float32 by qwix with one absmax scale per `lora.quantization_block_size` elements
    along `block_axis` and per index of every other axis, in its stored form."""
    channelwise = tuple(axis for axis in range(dense.ndim) if axis != block_axis)
    q = qwix.quantize(
        dense.astype(jnp.float32),
        QTYPES[lora.base_quantization],
        channelwise_axes=channelwise,
        tiled_axes={block_axis: lora.quantization_block_size},
        scale_dtype=scale_dtype,
    )
    axis = block_axis - dense.ndim
    codes = q.qvalue if lora.base_quantization == "int8" else _pack_nibbles(q.qvalue, axis)
    return QuantizedArray(codes, q.scale, lora.base_quantization, axis)


def check_block_size(name: str, axis_name: str, dim: int, lora: LoraConfig) -> None:
    if dim % lora.quantization_block_size or (lora.base_quantization == "nf4" and dim % 2):
        raise ConfigError(
            f"lora.quantization_block_size={lora.quantization_block_size} does not divide {name}'s input axis "
            f"{axis_name}={dim} (each weight is quantized in blocks along its last input axis; nf4 packs pairs)"
        )


class QuantizedWeight(nnx.Module):
    """A frozen [Y, *in, *out] weight as codes and per-block scales (see the module docstring)."""

    def __init__(self, name: str, dense: jax.Array, logical_axes: tuple[str, ...], n_in: int, lora: LoraConfig):
        check_block_size(name, logical_axes[n_in], dense.shape[n_in], lora)
        q = quantize_blocks(dense, n_in, lora, dense.dtype)  # the layers axis leads, so the last input axis is n_in
        self.codes = nnx.Param(q.codes, logical_axes=logical_axes)
        self.scale = nnx.Param(q.scale, logical_axes=logical_axes)
        self.quantization, self.block_axis = q.quantization, q.block_axis

    def stored(self) -> QuantizedArray:
        return QuantizedArray(self.codes[...], self.scale[...], self.quantization, self.block_axis)


def frozen_matmul(contract: str, x: jax.Array, w: jax.Array | QuantizedArray) -> jax.Array:
    """`einsum(contract, x, w)` in x's dtype, for a dense or a quantized weight."""
    if isinstance(w, QuantizedArray):
        return _dequantized_matmul(contract, x, w)
    return jnp.einsum(contract, x, w.astype(x.dtype))


@functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable, static_argnums=(0,))
def _dequantized_matmul(contract: str, x: jax.Array, w: QuantizedArray) -> jax.Array:
    return jnp.einsum(contract, x, w.dense().astype(x.dtype))


def is_quantized_leaf(leaf) -> bool:
    """A quantized weight in a pure parameter dict (`nnx.to_pure_dict`): {"codes": ..., "scale": ...}."""
    return isinstance(leaf, dict) and set(leaf) == {"codes", "scale"}


def stored_leaf(leaf: dict, block_axis: int) -> QuantizedArray:
    """A pure dict's quantized weight, blocked along `block_axis` (an axis of the stacked weight: its n_in)."""
    quantization = {dtype: name for name, dtype in STORAGE_DTYPES.items()}.get(np.dtype(leaf["codes"].dtype))
    if quantization is None:
        raise ValueError(f"codes of dtype {leaf['codes'].dtype}: none of {sorted(map(str, STORAGE_DTYPES.values()))}")
    return QuantizedArray(leaf["codes"], leaf["scale"], quantization, block_axis - leaf["codes"].ndim)


def dequantized(leaf: dict, block_axis: int, layer: int | None = None) -> jax.Array:
    """The dense weight (one layer of it when `layer` is given) of a pure dict's quantized weight, in its scale's
    dtype, sharded as the codes are. Every process of a multi-host run must make the same calls (jitted)."""
    stored = stored_leaf(leaf, block_axis)
    return _dequantize(stored) if layer is None else _dequantize_layer(stored, layer)


@jax.jit
def _dequantize(stored: QuantizedArray) -> jax.Array:
    return stored.dense()


@jax.jit
def _dequantize_layer(stored: QuantizedArray, layer) -> jax.Array:  # one program for every layer: `layer` is traced
    return stored[layer].dense()
