"""Stopping on a signal, all processes at the same micro-batch: SIGTERM (a preempted VM, `tpu_pod.sh stop`) and
SIGINT (Ctrl-C) save a checkpoint and end the run; a second SIGINT ends the process at once. The same vote
carries wall-clock saves (`checkpoint.save_every_minutes`), so every process saves after the same step.

A preempted VM gets about 30 s of notice, and a step can be minutes (the 8B pod recipe: 128 micro-batches), so
the train step itself asks, before its first micro-batch and after each one (`ask_hosts`, used by
rpo_jax.train.step): every device calls back into its host for that process's answer (`HostVote`: the signal it
has seen, 0 for none, and on process 0 whether a wall-clock save is due), and the largest answer over all devices
is what every device reads, in the same iteration. On a pod the signal reaches hosts at different moments, or
only one of them; a host that stopped alone would leave the others waiting forever inside the next collective,
and this way they all stop at the same micro-batch. A stop ends the step's micro-batch loop; the step is dropped
and the state before it saved.

Python runs a signal handler only in the main thread, between bytecodes: while it sits in C++ (waiting for a
step, or dispatching one: XLA:CPU runs a program with host callbacks synchronously, measured: the handler ran only
after the next step's last micro-batch) a SIGTERM would not be seen until the step ended. So `StopSignals` also
reads the signal numbers Python's C-level handler writes to a wakeup fd (`signal.set_wakeup_fd`), in a watcher
thread: `received` is set within milliseconds whatever the main thread is doing. The trainer still waits for steps
with `wait_for`, in short sleeps, so the Python-level handlers (and Ctrl-C) stay prompt too.

(JAX's own `multihost_utils.reached_preemption_sync_point` is not used: its C++ SIGTERM handler, installed by
`jax.distributed.initialize()`, swallows SIGTERM until the training loop installs its own, knows nothing of
SIGINT, needs a second mechanism for one process anyway, and is checked between steps only.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh, PartitionSpec

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
        self._wakeup: tuple[int, int] | None = None  # (read end, write end) of the watcher's pipe
        self._previous_wakeup_fd = -1
        self._sigints = 0

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
            self._watch()
        self._depth += 1

    def restore(self) -> None:
        """Undoes one `install`; the last one puts the previous handlers (and wakeup fd) back."""
        self._depth -= 1
        if self._depth == 0:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            if self._wakeup is not None:
                signal.set_wakeup_fd(self._previous_wakeup_fd)
                os.close(self._wakeup[1])  # the watcher's read returns b"" and it ends, closing the read end
                self._wakeup = None

    def _watch(self) -> None:
        """Starts the watcher thread on a fresh wakeup pipe (see the module docstring)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the C-level handler must never block
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._wakeup = (read_fd, write_fd)
        threading.Thread(target=self._read_signals, args=(read_fd,), name="rpo-jax-signals", daemon=True).start()

    def _read_signals(self, read_fd: int) -> None:
        try:
            while chunk := os.read(read_fd, 64):
                for signum in chunk:
                    if signum == signal.SIGTERM:
                        self._on_sigterm(signum, None)
                    elif signum == signal.SIGINT:
                        self._sigints += 1
                        if self._sigints > 1:  # the second Ctrl-C: at once, as the default action would
                            os._exit(EXIT_CODES[STOP_SIGINT])
                        self._note_sigint()
        finally:
            os.close(read_fd)

    def _note(self, text: str) -> None:
        os.write(2, f"\nrpo-jax: {text}\n".encode())  # not print(): the handler may interrupt a print

    def _on_sigterm(self, signum, frame) -> None:
        if self.received == NO_STOP:
            self._note("SIGTERM: saving a checkpoint at a step all processes agree on, then exiting")
        self.received = max(self.received, STOP_SIGTERM)

    def _on_sigint(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self._note_sigint()

    def _note_sigint(self) -> None:
        if self.received != STOP_SIGINT:  # the watcher and the handler both see it: one note
            self.received = STOP_SIGINT
            self._note("interrupted: saving a checkpoint at a step all processes agree on (Ctrl-C again: stop at once)")


class HostVote:
    """This process's answer when the train step asks (`ask_hosts`): [the signal it has seen, a wall-clock save
    due]. Process 0's clock alone decides saves: due every `save_every_minutes` (0 = never), counted from the last
    save; answered once per interval (the save itself comes at the end of the step), and `saved()` restarts it, so
    a save by step count restarts it too. Called from the runtime's threads, once per local device and check."""

    def __init__(self, signals: StopSignals, *, save_every_minutes: float = 0.0, clock=time.monotonic):
        self.signals = signals
        self._save_every_s = save_every_minutes * 60 if jax.process_index() == 0 else 0.0
        self._clock = clock
        self._last_save = clock()

    def __call__(self) -> np.ndarray:
        due = bool(self._save_every_s) and self._clock() - self._last_save >= self._save_every_s
        if due:
            self._last_save = self._clock()
        return np.array([[self.signals.received, due]], np.int32)

    def saved(self) -> None:
        """A checkpoint was written (for whatever reason): the wall-clock interval starts again."""
        self._last_save = self._clock()


def ask_hosts(mesh: Mesh, vote: HostVote | None):
    """ask(after) -> int32[2] inside a jitted function: the largest [signal, save due] any device's host answers
    (one host callback per device, an all-reduce over the mesh). `after` only orders the question after the value
    it is computed from. With no `vote`, zeros and no callback (a program compiled for planning or timing)."""
    if vote is None:
        return lambda after: jnp.zeros(2, jnp.int32)

    def per_device(after):
        return io_callback(lambda _: vote(), jax.ShapeDtypeStruct((1, 2), jnp.int32), after)

    axes = PartitionSpec(mesh.axis_names)
    asked = jax.shard_map(per_device, mesh=mesh, in_specs=PartitionSpec(), out_specs=axes, check_vma=False)
    return lambda after: jnp.max(asked(jnp.asarray(after, jnp.float32)), axis=0)


def wait_for(tree, poll_s: float = 0.01) -> None:
    """Blocks until every array of `tree` is ready, in short sleeps, so signal handlers run meanwhile."""
    arrays = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    while not all(x.is_ready() for x in arrays):
        time.sleep(poll_s)


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
