"""Running out of memory, reported as one line that says what to change.

XLA raises `RESOURCE_EXHAUSTED: Out of memory allocating N bytes` (host memory on CPU, HBM on an accelerator) from
deep inside a step, under a long traceback. A person fixes it by changing settings, not code, so the CLI prints it
like any other `UserError`: the allocation that failed and the settings that shrink a step's memory.
"""

from __future__ import annotations

from data_pipeline.errors import UserError

XLA_STATUS = "RESOURCE_EXHAUSTED"
WHAT_TO_CHANGE = (
    "fewer rows per micro-batch (train.grad_accum_steps, data.global_batch_size), shorter rows (data.max_length) "
    "or rematerialisation (model.remat_policy=full); `rpo-jax plan` estimates a config's memory without running it"
)


class OutOfMemory(UserError):
    """An allocation failed: the configured step (or sampler batch) needs more memory than the device has."""


def out_of_memory(error: BaseException, where: str = "") -> OutOfMemory | None:
    """`error` as an `OutOfMemory` naming `where` (e.g. the experiment stage), or None if it is something else."""
    text = str(error)
    if XLA_STATUS not in text:
        return None
    status = next(line.strip() for line in text.splitlines() if XLA_STATUS in line).rstrip(".")
    return OutOfMemory(f"{where + ': ' if where else ''}{status}; {WHAT_TO_CHANGE}")
