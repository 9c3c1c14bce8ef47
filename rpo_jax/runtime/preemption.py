"""Stopping on a signal, all processes at the same step: SIGTERM (a preempted VM, `tpu_pod.sh stop`) and SIGINT
(Ctrl-C) save a checkpoint and end the run; a second SIGINT ends the process at once.

On a pod the signal reaches hosts at different moments, or only one of them. A host that stopped alone would
leave the others waiting forever inside the next step's collectives, so the hosts vote: after dispatching each
train step, every process contributes the signal it has seen (0 for none) to a tiny all-reduce (max) over all
devices. The vote of step t is read one step later, when the host waits for step t's metrics anyway, so voting
never stalls the pipeline, and every process reads the same votes at the same step and stops together.

(JAX's own `multihost_utils.reached_preemption_sync_point` is not used: its C++ SIGTERM handler, installed by
`jax.distributed.initialize()`, swallows SIGTERM until the training loop installs its own, knows nothing of
SIGINT, and needs a second mechanism for one process anyway.)
"""

from __future__ import annotations

import os
import signal
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Vote values: the larger wins, so a Ctrl-C anywhere makes every process exit as interrupted.
NO_STOP, STOP_SIGTERM, STOP_SIGINT = 0, 1, 2
EXIT_CODES = {STOP_SIGTERM: 0, STOP_SIGINT: 130}  # 130 = 128 + SIGINT, what shells report for Ctrl-C
SIGNAL_NAMES = {STOP_SIGTERM: "SIGTERM", STOP_SIGINT: "SIGINT"}


class StopSignals:
    """While installed, SIGTERM and the first SIGINT only record that a stop was asked for (`received`); the
    second SIGINT gets the default action (the process ends at once). Use as a context manager; nesting is fine."""

    def __init__(self):
        self.received = NO_STOP
        self._previous: dict[int, object] = {}
        self._depth = 0

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def install(self) -> None:
        if self._depth == 0:
            self._previous = {
                signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
                signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint),
            }
        self._depth += 1

    def restore(self) -> None:
        """Undoes one `install`; the last one puts the previous handlers back."""
        self._depth -= 1
        if self._depth == 0:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _note(self, text: str) -> None:
        os.write(2, f"\nrpo-jax: {text}\n".encode())  # not print(): the handler may interrupt a print

    def _on_sigterm(self, signum, frame) -> None:
        if self.received == NO_STOP:
            self._note("SIGTERM: saving a checkpoint at a step all processes agree on, then exiting")
        self.received = max(self.received, STOP_SIGTERM)

    def _on_sigint(self, signum, frame) -> None:
        self.received = STOP_SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self._note("interrupted: saving a checkpoint at a step all processes agree on (Ctrl-C again: stop at once)")


class StopVote:
    """One vote per train step (`cast`); `agreed()` is the stop every process reads at the same step (NO_STOP,
    STOP_SIGTERM or STOP_SIGINT). Several processes: the largest vote among those cast before the latest one,
    whose all-reduce is still in flight. One process has nobody to agree with, so it reads its own signal at
    once: a preempted single-host run stops after the step already queued, not two steps later."""

    def __init__(self, signals: StopSignals):
        self.signals = signals
        self._votes: deque = deque()
        self._agreed = NO_STOP
        self._reduce = None
        if jax.process_count() > 1:
            mesh = Mesh(np.asarray(jax.devices()), ("all",))
            self._sharding = NamedSharding(mesh, PartitionSpec("all"))
            self._reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def cast(self) -> None:
        """Records this process's vote for the step just dispatched (an all-reduce in flight when multi-host)."""
        if self._reduce is None:
            return
        mine = self.signals.received
        shape = (jax.device_count(),)
        rows = [
            jax.device_put(np.full((1,), mine, np.int32), device)
            for device in self._sharding.addressable_devices_indices_map(shape)
        ]
        self._votes.append(self._reduce(jax.make_array_from_single_device_arrays(shape, self._sharding, rows)))

    def agreed(self) -> int:
        """One process: its own signal. Several: every vote but the latest (their steps are done, or about to be).
        The stop, once agreed, stays."""
        if self._reduce is None:
            self._agreed = max(self._agreed, self.signals.received)
        while len(self._votes) > 1:
            self._agreed = max(self._agreed, int(self._votes.popleft().addressable_data(0)))
        return self._agreed


class TrainingInterrupted(Exception):
    """Ctrl-C stopped the run after saving a checkpoint; `rpo-jax train` exits 130."""

    exit_code = EXIT_CODES[STOP_SIGINT]


def stopped_early(stopped_by: int, stopped_at: int | None, steps: int, checkpointer, resume) -> bool:
    """After a stop before the last step: waits for the checkpoint, says so (one line per process), and raises
    `TrainingInterrupted` for SIGINT; False when the run went to its last step. `resume` is the run's
    `ResumeRequest` (or None): with no step it resumes from the newest checkpoint, so rerunning the command continues.
    """
    if stopped_by == NO_STOP or stopped_at is None or stopped_at >= steps:
        return False
    checkpointer.close()
    resuming_newest = resume is not None and resume.step is None
    message = (
        f"{SIGNAL_NAMES[stopped_by]}: stopped at step {stopped_at} of {steps} with a checkpoint in "
        f"{checkpointer.directory}; "
        + ("the same command continues from it" if resuming_newest else "continue from it with --resume")
    )
    if stopped_by == STOP_SIGINT:
        raise TrainingInterrupted(message)
    print(f"rpo-jax: {message}", flush=True)
    return True
