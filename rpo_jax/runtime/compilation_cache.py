"""JAX's persistent compilation cache, on by default: a repeated or resumed run, an eval or a generate loads its
compiled programs from disk instead of compiling them again (minutes for a large model on a TPU pod).

JAX does not store a program holding host callbacks (`jax._src.compiler._cache_write`), which the train step does
(the in-step stop vote, `rpo_jax.runtime.preemption.ask_hosts`): a run compiles its train step at every start and
loads the rest (initialisation, evaluation, export) from the cache.

`rpo-jax train` uses `train.compilation_cache_dir` (default `<output_dir>/jax_compilation_cache`, gs:// allowed, so
the cache outlives the VMs of a pod); `eval` and `generate` use `JAX_COMPILATION_CACHE_DIR` when it is set (JAX's
own variable; "" = off) and otherwise `$XDG_CACHE_HOME/rpo-jax/jax_compilation_cache` (default ~/.cache). JAX keeps
only programs that took at least `jax_persistent_cache_min_compile_time_secs` (1 s) to compile.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from data_pipeline.storage import is_bucket_path, use_storage_emulator


def run_cache_dir(compilation_cache_dir: str, output_dir: str) -> str:
    """`train.compilation_cache_dir` with `{output_dir}` filled in ('' = off)."""
    return compilation_cache_dir.replace("{output_dir}", output_dir.rstrip("/"))


def default_cache_dir() -> str:
    """For commands without a run folder (eval, generate): JAX_COMPILATION_CACHE_DIR, else the user's cache."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(root / "rpo-jax" / "jax_compilation_cache")


def enable_compilation_cache(directory: str) -> None:
    """Points JAX's persistent cache at `directory` ('' = off) before the next compile. JAX opens its cache once
    per process, at the first compile; a process that trains twice into different folders (a library user, the
    tests) has it reopened at the new folder instead of writing into the first one."""
    from jax.experimental.compilation_cache import compilation_cache

    if is_bucket_path(directory):
        use_storage_emulator()
    elif directory:
        directory = str(Path(directory).absolute())
    if (directory or None) == jax.config.jax_compilation_cache_dir:
        return
    compilation_cache.reset_cache()  # closes the cache opened at `current` (a no-op when none was)
    jax.config.update("jax_compilation_cache_dir", directory or None)
