"""Streaming safetensors writer: shards are planned from shapes, then tensors are written one at a time.

The header (names, dtypes, byte offsets) is fixed before any data is produced, so only one tensor is ever
held on the host, unlike `safetensors.numpy.save_file`, which needs a whole shard in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def plan_shards(entries: Sequence[tuple[str, tuple[int, ...], str]], max_shard_bytes: int) -> list[list[int]]:
    """Groups entry indices (in order) into shards of at most `max_shard_bytes` (a bigger tensor goes alone)."""
    shards: list[list[int]] = [[]]
    used = 0
    for k, (_, shape, dtype) in enumerate(entries):
        nbytes = math.prod(shape) * np.dtype(_np_dtype(dtype)).itemsize
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(k)
        used += nbytes
    return shards


def _np_dtype(dtype: str):
    return ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)


def write_file(
    path: Path, entries: Sequence[tuple[str, tuple[int, ...], str]], produce: Callable[[int], np.ndarray]
) -> None:
    """Writes `entries` (name, shape, dtype name) to one safetensors file; `produce(k)` gives tensor k."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = math.prod(shape) * np.dtype(_np_dtype(dtype)).itemsize
        header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format asks for 8-byte aligned data
    with open(path, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for k, (name, shape, dtype) in enumerate(entries):
            array = np.ascontiguousarray(produce(k))
            if array.shape != tuple(shape) or array.dtype != np.dtype(_np_dtype(dtype)):
                raise ValueError(
                    f"{path}: tensor {name} produced {array.shape} {array.dtype}, planned {tuple(shape)} {dtype}"
                )
            f.write(array.tobytes())
