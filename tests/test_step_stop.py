"""The train step asks every host before its first micro-batch and after each one whether to stop or save
(rpo_jax.runtime.preemption.ask_hosts): never told, it equals the step that never asks; a stop ends it at that
micro-batch and changes nothing; the wall-clock save answer is process 0's, once per interval."""

import threading
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from synthetic import make_batch, tiny_config
from test_train_step import LINEAR_OPTIM, assert_trees_close

from rpo_jax.runtime.preemption import NO_STOP, STOP_SIGTERM, HostVote, StopSignals
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.step import init_train_state, make_train_step

ACCUM = 4


class ScriptedVote(HostVote):
    """Answers SIGTERM from check number `stop_at` on (check 0 comes before the first micro-batch, check i + 1
    after micro-batch i), and a save due at check `save_at`; counts the callbacks (one per device and check)."""

    def __init__(self, devices: int):
        super().__init__(StopSignals())
        self.devices, self.calls, self.stop_at, self.save_at = devices, 0, None, None
        self._lock = threading.Lock()

    def __call__(self) -> np.ndarray:
        with self._lock:  # the devices' callbacks of one check may run at once; checks follow each other
            check = self.calls // self.devices
            self.calls += 1
        stop = STOP_SIGTERM if self.stop_at is not None and check >= self.stop_at else NO_STOP
        return np.array([[stop, check == self.save_at]], np.int32)


@pytest.fixture(scope="module")
def steps():
    """The step with and without a host vote, compiled once each on data 2 x fsdp 2 x tensor 2."""
    cfg = tiny_config(optim=LINEAR_OPTIM, train={"grad_accum_steps": ACCUM}, mesh={"data": 2, "fsdp": 2, "tensor": 2})
    mesh = make_mesh(cfg.mesh)
    policy = build_policy(cfg, mesh)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    _, state_sh = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    batch = make_batch(8, 2, 24, 128, seed=0)
    b_sh = batch_shardings(batch, mesh)
    vote = ScriptedVote(len(mesh.devices.flat))
    make = lambda host_vote: make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh, host_vote)  # noqa: E731

    def run(step_fn):
        state, _ = init_train_state(policy, optimizer, cfg.train.seed, mesh)
        on_mesh = {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()}
        state, metrics = step_fn(state, policy.frozen, policy.reference, on_mesh)
        return jax.device_get(state), jax.device_get(metrics)

    asking = make(vote)
    return SimpleNamespace(vote=vote, asking=lambda: run(asking), silent=run(make(None)), initial=policy.trainable)


def test_a_step_never_told_to_stop_equals_the_step_that_never_asks(steps):
    steps.vote.calls, steps.vote.stop_at = 0, None
    state, metrics = steps.asking()
    silent_state, silent_metrics = steps.silent
    assert_trees_close(state["params"], silent_state["params"], atol=1e-6)
    assert metrics["grad_norm"] == pytest.approx(float(silent_metrics["grad_norm"]), rel=1e-6)
    assert int(metrics["micro_batches"]) == ACCUM and int(metrics["stop"]) == NO_STOP
    assert int(state["step"]) == 1 and not metrics["save_requested"]
    assert steps.vote.calls == (ACCUM + 1) * steps.vote.devices  # before the first micro-batch, after each


@pytest.mark.parametrize("stop_at", [0, 2])
def test_a_stop_between_micro_batches_ends_the_step_and_changes_nothing(steps, stop_at):
    """Check 0 (before any micro-batch) or check 2 (after micro-batch 1 of 4): the loop ends there, every device
    agreeing, and the state is the one before the step, counters included."""
    steps.vote.calls, steps.vote.stop_at = 0, stop_at
    state, metrics = steps.asking()
    assert int(metrics["micro_batches"]) == stop_at and int(metrics["stop"]) == STOP_SIGTERM
    assert steps.vote.calls == (stop_at + 1) * steps.vote.devices
    assert int(state["step"]) == 0 and int(state["nonfinite_run"]) == 0 and int(state["nonfinite_total"]) == 0
    assert_trees_close(state["params"], jax.device_get(steps.initial), atol=0)


def test_a_stop_after_the_last_micro_batch_lets_the_step_finish(steps):
    steps.vote.calls, steps.vote.stop_at = 0, ACCUM
    state, metrics = steps.asking()
    assert int(metrics["micro_batches"]) == ACCUM and int(metrics["stop"]) == STOP_SIGTERM
    assert_trees_close(state["params"], steps.silent[0]["params"], atol=1e-6)
    assert int(state["step"]) == 1


def test_a_save_due_at_any_check_reaches_the_step_end(steps):
    steps.vote.calls, steps.vote.stop_at, steps.vote.save_at = 0, None, 3
    _, metrics = steps.asking()
    steps.vote.save_at = None
    assert metrics["save_requested"] and int(metrics["micro_batches"]) == ACCUM


def test_wall_clock_save_is_due_once_per_interval_on_process_0():
    now = [0.0]
    vote = HostVote(StopSignals(), save_every_minutes=2.0, clock=lambda: now[0])
    due = []
    for minute in np.arange(0.0, 9.0, 0.5):  # a check every 30 s
        now[0] = minute * 60
        if vote()[0, 1]:
            due.append(float(minute))
        if minute == 5.0:  # a save by step count restarts the interval
            vote.saved()
    # Due at 2 and 4 min (answered once each: the clock restarts when it answers); saved at 5, due again at 7.
    assert due == [2.0, 4.0, 7.0]


def test_no_wall_clock_saves_when_off():
    now = [0.0]
    vote = HostVote(StopSignals(), clock=lambda: now[0])
    for seconds in (0.0, 1e6, 1e9):
        now[0] = seconds
        assert vote()[0, 1] == 0
