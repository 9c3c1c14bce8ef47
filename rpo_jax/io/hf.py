"""Reading HuggingFace Llama folders (config.json + safetensors) into our parameter state, through the tensor
table of `rpo_jax.io.hf_table` (which the export reads too).

Import never builds a full host copy: every parameter is created with `jax.make_array_from_callback` in its
target sharding, and the callback reads from safetensors only the rows/columns the requesting device holds.
Pickle-based weights (`.bin`, `.pt`, ...) are refused, never loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open

from data_pipeline.errors import UserError, malformed_json
from data_pipeline.files import read_utf8
from rpo_jax.config.schema import LoraConfig, ModelConfig
from rpo_jax.io.hf_config import HFConfigError, model_config_from_hf
from rpo_jax.io.hf_table import LM_HEAD, TensorMap, hf_tensor_names, table_for
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import state_shardings

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}


class HFWeightsError(UserError, ValueError):
    """A HF weight folder does not match the model its config.json describes."""


# ---------------------------------------------------------------- reading a folder


def read_hf_config(hf_dir: str | Path, **kwargs) -> ModelConfig:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConfigError(f"{path}: not found")
    try:
        raw = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise HFConfigError(f"{path}:{e.lineno}: {malformed_json(e)}") from e
    return model_config_from_hf(raw, str(path), **kwargs)


def weight_files(hf_dir: str | Path) -> tuple[dict[str, Path], Path]:
    """Maps each tensor name to its safetensors file; also returns the file that listed them (for errors)."""
    hf_dir = Path(hf_dir)
    index, single = hf_dir / INDEX_FILE, hf_dir / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise HFWeightsError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from e
        for name, file in weight_map.items():
            if not file.endswith(".safetensors"):
                raise HFWeightsError(
                    f"{index}: tensor {name} lives in {file}, not a .safetensors file; "
                    f"pickle-based weights are never loaded"
                )
            if not (hf_dir / file).is_file():
                raise HFWeightsError(f"{index}: tensor {name}: file {hf_dir / file} does not exist")
        return {name: hf_dir / file for name, file in weight_map.items()}, index
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return {name: single for name in f.keys()}, single
    pickles = sorted(p.name for p in hf_dir.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise HFWeightsError(
            f"{hf_dir}: only pickle-based weights found ({', '.join(pickles)}); they are never "
            f"loaded. Convert them to safetensors ({SINGLE_FILE} or {INDEX_FILE})."
        )
    raise HFWeightsError(f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


class _Reader:
    """Open safetensors handles, kept for the whole import so callbacks read slices without reopening."""

    def __init__(self, stack: contextlib.ExitStack, files: dict[str, Path]):
        self._stack, self._files, self._handles = stack, files, {}

    def slice(self, name: str):
        file = self._files[name]
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(safe_open(file, framework="numpy"))
        return self._handles[file].get_slice(name)


def _check_tensors(cfg: ModelConfig, reader: _Reader, files: dict[str, Path], listing: Path) -> None:
    expected = {name: t for name, t, _ in hf_tensor_names(cfg)}
    missing = [n for n in expected if n not in files]
    if missing:
        raise HFWeightsError(
            f"{listing}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = sorted(set(files) - set(expected) - ({LM_HEAD} if cfg.tie_word_embeddings else set()))
    if extra:
        raise HFWeightsError(
            f"{files[extra[0]]}: unexpected tensor {extra[0]}"
            + (f" (and {len(extra) - 1} more: {extra[1:6]})" if len(extra) > 1 else "")
        )
    for name, t in expected.items():
        shape = tuple(reader.slice(name).get_shape())
        if shape != t.hf_shape(cfg):
            raise HFWeightsError(
                f"{files[name]}: tensor {name} has shape {shape}, config.json implies {t.hf_shape(cfg)}"
            )
    if cfg.tie_word_embeddings and LM_HEAD in files:
        # Some exporters write the tied head anyway; accept it only when it really is the embedding.
        head, embed = reader.slice(LM_HEAD), reader.slice("model.embed_tokens.weight")
        if tuple(head.get_shape()) != tuple(embed.get_shape()):
            raise HFWeightsError(
                f"{files[LM_HEAD]}: tensor {LM_HEAD} has shape {head.get_shape()} but tie_word_embeddings is true"
            )
        rows = head.get_shape()[0]
        for start in range(0, rows, 4096):
            stop = min(start + 4096, rows)
            if not np.array_equal(head[start:stop], embed[start:stop]):
                raise HFWeightsError(
                    f"{files[LM_HEAD]}: tensor {LM_HEAD} differs from model.embed_tokens.weight "
                    f"but config.json sets tie_word_embeddings=true"
                )


def _read_block(tensor_slice, t: TensorMap, cfg: ModelConfig, index: tuple[slice, ...]) -> np.ndarray:
    """Reads the part of one HF tensor that lands at `index` (in our per-layer layout), already transposed."""
    groups = t.split(cfg)
    flat = [s for g in groups for s in g]
    split_index = [slice(None)] * len(flat)
    for our_dim, split_dim in enumerate(t.perm):
        split_index[split_dim] = index[our_dim]
    hf_index, view_shape, post_index, k = [], [], [], 0
    for g in groups:
        # Only the outermost split dim is sliced in the file (contiguous rows); inner dims are sliced after.
        start, stop, _ = split_index[k].indices(g[0])
        inner = math.prod(g[1:])
        hf_index.append(slice(start * inner, stop * inner))
        view_shape += [stop - start, *g[1:]]
        post_index += [slice(None), *split_index[k + 1 : k + len(g)]]
        k += len(g)
    block = np.asarray(tensor_slice[tuple(hf_index)]).reshape(view_shape)
    return block[tuple(post_index)].transpose(t.perm)


class HFTensors:
    """The tensors of an HF folder (checked against `cfg` when opened) in our layout, read block by block: what
    one device holds of a parameter, from the safetensors files kept open in `stack`."""

    def __init__(self, stack: contextlib.ExitStack, hf_dir: str | Path, cfg: ModelConfig):
        files, listing = weight_files(hf_dir)
        self._reader, self._cfg = _Reader(stack, files), cfg
        _check_tensors(cfg, self._reader, files, listing)
        self._tables = {t.path: t for t in table_for(cfg)}

    def read(self, path: tuple[str, ...], index: tuple[slice, ...]) -> np.ndarray:
        """The block at `index` of our parameter `path` (per-layer ones stacked along `layers`), in the file's
        dtype."""
        t, cfg = self._tables[path], self._cfg
        if not t.per_layer:
            return _read_block(self._reader.slice(t.hf_name), t, cfg, index)
        layers = range(*index[0].indices(cfg.num_hidden_layers))
        return np.stack([_read_block(self._reader.slice(t.hf_name.format(i=i)), t, cfg, index[1:]) for i in layers])


def load_hf_state(
    hf_dir: str | Path,
    mesh: Mesh,
    *,
    param_dtype: str | None = None,
    scan_layers: bool = True,
    remat_policy: str = "none",
) -> tuple[ModelConfig, nnx.State]:
    """Reads a HF Llama folder straight into an NNX parameter state sharded on `mesh` (no LoRA params)."""
    cfg = read_hf_config(hf_dir, param_dtype=param_dtype, scan_layers=scan_layers, remat_policy=remat_policy)
    abstract_state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, LoraConfig(), rngs=nnx.Rngs(0))))[1]
    shardings = nnx.to_pure_dict(state_shardings(abstract_state, mesh))
    np_dtype = NP_DTYPES[cfg.param_dtype]
    pure: dict = {}
    with contextlib.ExitStack() as stack:
        tensors = HFTensors(stack, hf_dir, cfg)
        for t in table_for(cfg):
            shape = ((cfg.num_hidden_layers,) if t.per_layer else ()) + t.our_shape(cfg)
            node = pure
            for key in t.path[:-1]:
                node = node.setdefault(key, {})
            sharding = shardings
            for key in t.path:
                sharding = sharding[key]
            read = lambda index, t=t: tensors.read(t.path, index).astype(np_dtype)
            node[t.path[-1]] = jax.make_array_from_callback(shape, sharding, read)
    nnx.replace_by_pure_dict(abstract_state, pure)
    return cfg, abstract_state
