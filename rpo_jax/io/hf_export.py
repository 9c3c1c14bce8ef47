"""Our parameter state -> a HuggingFace Llama folder (config.json, safetensors shards + index, tokenizer files),
through the same `TENSOR_TABLE` the import reads. LoRA adapters are merged into their base weights; the folder
is written under a temporary name and renamed when complete. A bucket (gs://) has no rename: the folder is written
on local disk, then uploaded file by file with config.json last, and a folder without config.json is no model to
transformers or to rpo-jax (`is_hf_folder`).

Tensors stream one at a time (one layer of a stacked weight at a time) to process 0's host memory and straight
into the open safetensors file: nothing ever holds the whole model, on the host or on a chip. Multi-host, every
process takes part in each tensor's gather (a replicated copy of that one tensor, then dropped) and process 0
writes; the files are the same as from one process. A quantized (QLoRA) base is dequantized, layer by layer, before
its LoRA delta is merged: the export computes what the run computed."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from data_pipeline.storage import absolute_storage_path, is_bucket_path, upload_folder
from rpo_jax.config.schema import LoraConfig, ModelConfig
from rpo_jax.io.hf import INDEX_FILE, NP_DTYPES, SINGLE_FILE, TOKENIZER_FILES
from rpo_jax.io.hf_config import model_config_to_hf
from rpo_jax.io.hf_table import TensorMap, hf_tensor_names
from rpo_jax.model.llama import LAYER_WEIGHTS
from rpo_jax.model.quantization import dequantized, is_quantized_leaf

log = logging.getLogger(__name__)


def _leaf(pure: dict, path: tuple[str, ...]):
    node = pure
    for key in path:
        node = node[key]
    return node


class HostCopies:
    """One array (or one layer of a stacked one) in this host's memory. An array spread over other hosts' devices
    is first gathered into a replicated copy of just that tensor (every process must make the same calls)."""

    def __init__(self):
        self._gathers: dict = {}  # (mesh, sliced) -> jitted gather, compiled once per tensor shape

    def __call__(self, array, layer: int | None) -> np.ndarray:
        if not isinstance(array, jax.Array) or array.is_fully_addressable:
            return np.asarray(jax.device_get(array if layer is None else array[layer]))
        key = (array.sharding.mesh, layer is not None)
        if key not in self._gathers:
            replicated = NamedSharding(array.sharding.mesh, PartitionSpec())
            self._gathers[key] = jax.jit(lambda a, i: a if i is None else a[i], out_shardings=replicated)
        return np.asarray(self._gathers[key](array, layer).addressable_data(0))


def _tensor_parts(pure: dict, t: TensorMap, layer: int | None, host: HostCopies) -> list[np.ndarray]:
    """The arrays one HF tensor is made of, on this host: the weight, then its LoRA factors A and B if any."""
    weight = _leaf(pure, t.path)
    # A quantized (QLoRA) base is exported dequantized, as the run computed with it; one layer at a time.
    if is_quantized_leaf(weight):
        parts = [host(dequantized(weight, LAYER_WEIGHTS[t.path[-1]][1], layer), None)]
    else:
        parts = [host(weight, layer)]
    if t.path[0] == "layers" and f"lora_a_{t.path[-1]}" in pure["layers"]:
        parts += [host(pure["layers"][f"lora_{ab}_{t.path[-1]}"], layer) for ab in "ab"]
    return parts


def _hf_tensor(parts: list[np.ndarray], t: TensorMap, cfg: ModelConfig, lora_scale: float) -> np.ndarray:
    """One HF tensor in fp32 from our layout; LoRA deltas (scale·A@B, in our layout) merged when present."""
    w = np.asarray(parts[0], np.float32)
    if len(parts) == 3:
        a, b = (np.asarray(p, np.float32) for p in parts[1:])
        w = w + lora_scale * np.tensordot(a, b, axes=1)  # A [*in, R] @ B [R, *out] is W's own layout
    inverse = np.argsort(t.perm)
    return w.transpose(inverse).reshape(t.hf_shape(cfg))


def export_hf(
    state: nnx.State | dict,
    cfg: ModelConfig,
    lora_cfg: LoraConfig,
    output_dir: str | Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    tokenizer_dir: str | Path | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> list[str]:
    """Writes a HF Llama folder (config.json, safetensors, tokenizer files) atomically; returns files written.

    `extra_files` ({name: content}, e.g. `hf_chat_files.chat_files`) are written last, replacing copied ones.

    LoRA adapters in `state` are always merged into their base weights (HF Llama has no place for them).
    Multi-host: call on every process (each tensor is gathered in turn); process 0 writes, the others return
    once the folder is complete.
    """
    from rpo_jax.io.safetensors_writer import plan_shards, write_file

    in_bucket = is_bucket_path(output_dir)
    output_dir = absolute_storage_path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir}: already exists; refusing to overwrite")
    dtype = dtype or cfg.param_dtype
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    lora_scale = lora_cfg.alpha / lora_cfg.rank if lora_cfg.rank > 0 else 0.0
    has_lora = any(k.startswith("lora_") for k in pure["layers"])
    if has_lora and lora_cfg.rank == 0:
        raise ValueError("state has LoRA parameters but lora_cfg.rank is 0; cannot merge them")
    tokenizer_files = []
    if tokenizer_dir is not None:
        tokenizer_files = [Path(tokenizer_dir) / n for n in TOKENIZER_FILES if (Path(tokenizer_dir) / n).is_file()]
        if not tokenizer_files:
            raise FileNotFoundError(f"{tokenizer_dir}: none of {TOKENIZER_FILES}")
    tensors = list(hf_tensor_names(cfg))
    entries = [(name, t.hf_shape(cfg), dtype) for name, t, _ in tensors]
    shards = plan_shards(entries, max_shard_bytes)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors" for s in range(len(shards))]
    )

    index_files = [INDEX_FILE] if len(shards) > 1 else []
    copied = [p.name for p in tokenizer_files if p.name not in (extra_files or {})]
    written = ["config.json", *names, *index_files, *copied, *(extra_files or {})]
    host = HostCopies()

    def produce(k: int) -> np.ndarray:
        _, t, layer = tensors[k]
        return _hf_tensor(_tensor_parts(pure, t, layer, host), t, cfg, lora_scale).astype(NP_DTYPES[dtype])

    if jax.process_index() != 0:
        for _, t, layer in tensors:  # the same gathers, in the same order, as process 0's writes
            _tensor_parts(pure, t, layer, host)
        multihost_utils.sync_global_devices("rpo_jax_export_hf")
        return written
    if in_bucket:
        tmp = Path(tempfile.mkdtemp(prefix="rpo_jax_hf_export_"))
    else:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_dir.parent / f".{output_dir.name}.tmp-export"
        if tmp.exists():  # left by an interrupted export
            shutil.rmtree(tmp)
        tmp.mkdir()
    for file, shard in zip(names, shards):
        write_file(tmp / file, [entries[k] for k in shard], lambda j, shard=shard: produce(shard[j]))
    if len(shards) > 1:
        total = sum(math.prod(shape) * NP_DTYPES[dt].itemsize for _, shape, dt in entries)
        weight_map = {entries[k][0]: file for file, shard in zip(names, shards) for k in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(model_config_to_hf(cfg, dtype), indent=2) + "\n")
    for src in tokenizer_files:
        (tmp / src.name).write_bytes(src.read_bytes())
    for name, content in (extra_files or {}).items():
        (tmp / name).write_bytes(content)
    if in_bucket:
        try:
            upload_folder(tmp, str(output_dir), marker="config.json")
        finally:
            shutil.rmtree(tmp)
    else:
        tmp.rename(output_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("rpo_jax_export_hf")
    if has_lora:
        log.info("merged LoRA adapters (scale %s) into %s", lora_scale, output_dir)
    return written
