"""Who may write into `train.output_dir`: one run per folder, never two mixed.

A folder holding a run's outputs (checkpoints, metrics.jsonl, report.png, hf/, ...) is continued only with
`--resume`, replaced only with `--overwrite`, and otherwise refused before any work: a second run started into
it would append its metrics to the first one's, leave the first one's checkpoints beside its own export, and
exit 0. The tokenized data (`data/`) and reference log-probs (`ref_logps/`) are caches keyed by their content's
fingerprint, and JAX's compiled programs (`jax_compilation_cache/`) by theirs; they are reused by any run and
never count as "a run is here". The folder may be a gs:// bucket path (`data_pipeline.storage`).
"""

from __future__ import annotations

from pathlib import Path

import jax

from data_pipeline.storage import remove_tree, storage_path
from rpo_jax.config.schema import ConfigError
from rpo_jax.train.run_data import check_output_dir

# What `rpo-jax train` writes into its output folder; `--overwrite` removes exactly these.
RUN_OUTPUTS = (
    "checkpoints",
    "set_aside_checkpoints",
    "metrics.jsonl",
    "metrics.tmp",
    "report.png",
    "report.tmp.png",
    "hf",
    ".hf.tmp-export",
    "tensorboard",
    "wandb",
    "trackers.json",
    "mixture.json",
    "checkpoint_errors.log",
)
CACHES = ("data", "ref_logps", "jax_compilation_cache")


def _listing(paths: list) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in paths)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def claim_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True) -> str:
    """Applies the policy; returns a line saying what was done ('' when the folder was empty or new).

    Raises ConfigError (before anything is written) for a folder holding a run without `--resume` or
    `--overwrite`, or for both flags at once. Only the main process deletes (`is_main`); every process checks.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in train.output_dir, --overwrite replaces it: pass one")
    out = storage_path(output_dir)
    listing = out.iterdir() if out.is_dir() else ()  # a bucket has no empty folders: nothing written yet
    present = [p for p in listing if p.name not in CACHES and not p.name.startswith(".write_probe")]
    if resume or not present:
        return ""
    ours = [p for p in present if p.name in RUN_OUTPUTS]
    if not overwrite:
        what = "already holds a run" if ours else "is not empty"
        raise ConfigError(
            f"train.output_dir={out} {what} ({_listing(present)}): pass --resume to continue that run, "
            "--overwrite to replace its outputs, or choose another --output-dir"
        )
    kept = [p for p in present if p.name not in RUN_OUTPUTS]
    note = f"; kept {_listing(kept)} (not written by rpo-jax train)" if kept else ""
    note = f"--overwrite: removed the previous run's {_listing(ours) or 'nothing'} from {out}{note}"
    if is_main:
        for path in ours:
            remove_tree(path)
    return note


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool):
    """`train.output_dir` created, proven writable and claimed for this run (all processes; the main one
    deletes and reports); returns it."""
    out = check_output_dir(output_dir)
    is_main = jax.process_index() == 0
    note = claim_output_dir(out, resume=resume, overwrite=overwrite, is_main=is_main)
    if note and is_main:
        print(note, flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("rpo_jax_claim_output_dir")
    return out
