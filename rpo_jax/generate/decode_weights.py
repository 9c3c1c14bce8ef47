"""The weights a sampler decodes with: a `Llama`'s stacked layers laid out once for one-token steps.

Training keeps every layer's weights stacked along a leading `layers` axis and runs `lax.scan` over it. A decode
step is the same arithmetic on one token per row, and there that layout costs: XLA:CPU copies each layer's slice of
every stacked weight out of the stack on every token (a `dynamic-slice` per weight per layer: on SmolLM2-135M at
batch 32 a step took 242 ms through the scan against 140 ms with one array per layer; docs/benchmarks.md,
"Decoding speed"). So the sampler holds:

- one set of arrays per layer (the decode program loops over layers in Python; each layer's weights are its own
  buffers, read in place);
- q, k and v as one [D, K, G + 2, Dh] matrix (for each kv head: its G query heads, then its key, then its value) and
  gate and up as one [D, 2, F] matrix, where the weights are dense: a token then takes one matmul for the three
  attention inputs and one for the two MLP inputs (73 against 91 ms for the matmuls of a step in the same
  measurement). Grouping by kv head keeps tensor parallelism: a mesh that shards query heads and kv heads over
  the same axis shards the fused matrix over K with every head in its shard;
- a quantized base (QLoRA) as it is stored, one layer sliced out of it (fusing would need it dequantized);
- LoRA factors beside their weights, their delta added per projection as in training (merging them into a bf16
  weight would round the delta away), or left out when the sampler decodes the base (`use_lora=False`).

Building this copies the layer weights once (the stacked arrays are freed when the caller drops the model).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.model.quantization import QuantizedArray

QKV = ("wq_DHDh", "wk_DKDh", "wv_DKDh")
GATE_UP = ("w_gate_DF", "w_up_DF")
FUSED_QKV, FUSED_GATE_UP = "wqkv_DKJDh", "w_gate_up_D2F"  # J = G query heads + key + value


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeWeights:
    embed_VD: jax.Array
    final_norm_D: jax.Array
    lm_head_DV: jax.Array | None  # None when tied to the embedding
    layers: tuple[dict, ...]  # one dict of arrays per layer (see the module docstring for its keys)

    def lm_head(self) -> jax.Array:
        """[D, V] output projection."""
        return self.embed_VD.T if self.lm_head_DV is None else self.lm_head_DV


def _layer_spec(array: jax.Array) -> PartitionSpec:
    """The stacked array's partition without its leading layers axis (replicated if it was not mesh-sharded)."""
    sharding = array.sharding
    return PartitionSpec(*tuple(sharding.spec)[1:]) if isinstance(sharding, NamedSharding) else PartitionSpec()


def _padded(spec: PartitionSpec, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


def _qkv_spec(stacked: dict) -> PartitionSpec | None:
    """The fused q/k/v matrix's partition, or None when q, k and v cannot be fused (quantized, or query heads and kv
    heads sharded differently, so that a kv head and its query heads would sit on different devices)."""
    if any(isinstance(stacked[name], QuantizedArray) for name in QKV):
        return None
    (q_D, q_H, q_Dh), (k_D, k_K, k_Dh), (v_D, v_K, v_Dh) = (_padded(_layer_spec(stacked[n]), 3) for n in QKV)
    if not (q_D == k_D == v_D and q_H == k_K == v_K and q_Dh == k_Dh == v_Dh):
        return None
    return PartitionSpec(q_D, q_H, None, q_Dh)


def _gate_up_spec(stacked: dict) -> PartitionSpec | None:
    if any(isinstance(stacked[name], QuantizedArray) for name in GATE_UP):
        return None
    gate, up = (_padded(_layer_spec(stacked[n]), 2) for n in GATE_UP)
    return PartitionSpec(gate[0], None, gate[1]) if gate == up else None


def _one_layer(stacked: dict, layer, *, num_kv_heads: int, fuse_qkv: bool, fuse_gate_up: bool) -> dict:
    w = {name: jax.tree.map(lambda a: a[layer], array) for name, array in stacked.items()}
    if fuse_qkv:
        q_DHDh, k_DKDh, v_DKDh = (w.pop(name) for name in QKV)
        D, H, Dh = q_DHDh.shape
        q_DKGDh = q_DHDh.reshape(D, num_kv_heads, H // num_kv_heads, Dh)  # query head h reads kv head h // G
        w[FUSED_QKV] = jnp.concatenate([q_DKGDh, k_DKDh[:, :, None], v_DKDh[:, :, None]], axis=2)
    if fuse_gate_up:
        w[FUSED_GATE_UP] = jnp.stack([w.pop(name) for name in GATE_UP], axis=1)
    return w


def decode_weights(model, mesh: Mesh, use_lora: bool) -> DecodeWeights:
    """`model`'s weights in the decode layout, each layer's sharded as its slice of the stacked weight was."""
    stacked = model.layers.stacked()
    if not use_lora:
        stacked = {name: array for name, array in stacked.items() if not name.startswith("lora_")}
    qkv_spec, gate_up_spec = _qkv_spec(stacked), _gate_up_spec(stacked)
    out_specs = {name: jax.tree.map(_layer_spec, array) for name, array in stacked.items()}
    if qkv_spec is not None:
        out_specs = {name: spec for name, spec in out_specs.items() if name not in QKV} | {FUSED_QKV: qkv_spec}
    if gate_up_spec is not None:
        out_specs = {n: spec for n, spec in out_specs.items() if n not in GATE_UP} | {FUSED_GATE_UP: gate_up_spec}
    out_shardings = jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), out_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    # One program for every layer: the layer index is traced.
    slice_layer = jax.jit(
        _one_layer,
        static_argnames=("num_kv_heads", "fuse_qkv", "fuse_gate_up"),
        out_shardings=out_shardings,
    )
    fuse = dict(fuse_qkv=qkv_spec is not None, fuse_gate_up=gate_up_spec is not None)
    layers = tuple(
        slice_layer(stacked, jnp.int32(i), num_kv_heads=model.cfg.num_key_value_heads, **fuse)
        for i in range(model.cfg.num_hidden_layers)
    )
    lm_head = None if model.cfg.tie_word_embeddings else model.lm_head_DV[...]
    return DecodeWeights(model.embed_VD[...], model.final_norm_D[...], lm_head, layers)
