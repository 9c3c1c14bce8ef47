"""A QLoRA run's frozen base read from its init checkpoint (a params checkpoint or an HF folder) straight into
quantized, sharded arrays (`rpo_jax.model.quantization`), one layer of one weight at a time.

Every array is created in its target sharding with `jax.make_array_from_callback`, whose callback reads only the
block one device holds: safetensors slices of an HF folder (`io.hf.HFTensors`), or TensorStore reads of the arrays
Orbax stored in a params checkpoint (through Orbax's own TensorStore spec and context, so bucket paths work as they do
for a restore). Embedding, norms and head stay dense, cast to `model.param_dtype`. Each quantized weight is
filled layer by layer: the layer is read in float32 in the layer's sharding, quantized where it lies (a scale block
never straddles two shards) and written into the stacked codes and scales in place (donated). Beyond the quantized
model a device holds at most its share of one layer of one weight in float32, and a host the blocks its devices
read: the dense model is never materialised, on a chip or on a host.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rpo_jax.config.schema import LoraConfig, ModelConfig
from rpo_jax.io.hf import HFTensors, read_hf_config
from rpo_jax.io.params import check_hf_architecture, checked_params_dir, hf_folder_here, is_hf_folder
from rpo_jax.model.llama import LAYER_WEIGHTS, Llama
from rpo_jax.model.quantization import is_quantized_leaf, quantize_blocks


class ParamsTensors:
    """The arrays of a params checkpoint (checked against `wanted_tree`: names, shapes, dtypes), read block by
    block with TensorStore, as `HFTensors` reads an HF folder."""

    def __init__(self, path: str | Path, wanted_tree: dict):
        self._dir = epath.Path(str(checked_params_dir(path, wanted_tree)))
        # How Orbax laid the arrays out (its own record of the save); absent keys are Orbax's defaults.
        layout = json.loads((self._dir / "_METADATA").read_text()) if (self._dir / "_METADATA").exists() else {}
        self._ocdbt, self._zarr3 = layout.get("use_ocdbt", True), layout.get("use_zarr3", False)
        self._context = ocp.type_handlers.get_ts_context(use_ocdbt=self._ocdbt)
        self._stores: dict[str, ts.TensorStore] = {}

    def read(self, path: tuple[str, ...], index: tuple[slice, ...]) -> np.ndarray:
        name = ".".join(path)  # Orbax's name for the array at this key path
        if name not in self._stores:
            info = ocp.type_handlers.ParamInfo(
                name=name,
                parent_dir=self._dir,
                path=self._dir / name,
                is_ocdbt_checkpoint=self._ocdbt,
                use_zarr3=self._zarr3,
                ts_context=self._context,
            )
            spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._ocdbt)
            self._stores[name] = ts.open(spec, open=True, context=self._context).result()
        return np.asarray(self._stores[name][index].read().result())


def load_quantized_base(
    path: str | Path, model_cfg: ModelConfig, lora: LoraConfig, abstract_base: nnx.State, shardings: nnx.State
) -> dict:
    """The base (non-LoRA) parameters of a quantized model from checkpoint `path`, as the pure dict that
    `abstract_base` describes (each quantized weight {"codes", "scale"}), every array in its sharding. The
    checkpoint holds the dense model `model_cfg` describes (a params checkpoint: exactly its arrays, in its
    param_dtype; an HF folder: its architecture, any float dtype)."""
    with contextlib.ExitStack() as stack:
        if is_hf_folder(path):
            local = hf_folder_here(path)
            check_hf_architecture(local, model_cfg)
            source = HFTensors(stack, local, read_hf_config(local))
        else:
            dense = nnx.eval_shape(lambda: Llama(model_cfg, LoraConfig(), rngs=nnx.Rngs(0)))
            source = ParamsTensors(path, nnx.to_pure_dict(nnx.state(dense)))
        return _read_tree(source, abstract_base.to_pure_dict(), shardings.to_pure_dict(), lora, ())


def _read_tree(source, wanted: dict, shardings: dict, lora: LoraConfig, prefix: tuple[str, ...]) -> dict:
    out = {}
    for key, leaf in wanted.items():
        path = (*prefix, key)
        if is_quantized_leaf(leaf):
            out[key] = _read_quantized(source, path, leaf, shardings[key], lora)
        elif isinstance(leaf, dict):
            out[key] = _read_tree(source, leaf, shardings[key], lora, path)
        else:
            read = lambda index, path=path, dtype=leaf.dtype: source.read(path, index).astype(dtype)  # noqa: E731
            out[key] = jax.make_array_from_callback(leaf.shape, shardings[key], read)
    return out


def _read_quantized(source, path: tuple[str, ...], leaf: dict, shardings: dict, lora: LoraConfig) -> dict:
    """One quantized weight, filled layer by layer (see the module docstring)."""
    out_shardings = (shardings["codes"], shardings["scale"])
    codes, scale = jax.jit(
        lambda: tuple(jnp.zeros(leaf[part].shape, leaf[part].dtype) for part in ("codes", "scale")),
        out_shardings=out_shardings,
    )()
    # The stacked weight is [Y, *in, *out]: in one layer the blocked (last input) axis comes one place earlier.
    block_axis = LAYER_WEIGHTS[path[-1]][1] - 1
    fill = jax.jit(
        functools.partial(_fill_layer, block_axis=block_axis, lora=lora),
        out_shardings=out_shardings,
        donate_argnums=(0, 1),
    )
    dense_shape = list(codes.shape[1:])
    if lora.base_quantization == "nf4":  # two codes per stored byte along the blocked axis
        dense_shape[block_axis] *= 2
    spec = tuple(shardings["codes"].spec) + (None,) * codes.ndim
    layer_sharding = NamedSharding(shardings["codes"].mesh, PartitionSpec(*spec[1 : codes.ndim]))
    for i in range(codes.shape[0]):
        read = lambda index, i=i: source.read(path, (slice(i, i + 1), *index))[0].astype(np.float32)  # noqa: E731
        layer = jax.make_array_from_callback(tuple(dense_shape), layer_sharding, read)
        codes, scale = fill(codes, scale, layer, i)
    return {"codes": codes, "scale": scale}


def _fill_layer(codes, scale, layer, i, *, block_axis: int, lora: LoraConfig):
    q = quantize_blocks(layer, block_axis, lora, scale.dtype)
    return codes.at[i].set(q.codes), scale.at[i].set(q.scale)
