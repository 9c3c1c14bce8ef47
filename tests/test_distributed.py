"""Multi-process start-up and stop signals, in this process: the RPO_JAX_* checks, the coordinator handshake
(threads stand in for processes), the platform's process count, signal handling and the stop vote's timing.
The CLI runs with real processes are in test_multihost.py."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from rpo_jax.runtime import distributed
from rpo_jax.runtime.preemption import STOP_SIGINT, STOP_SIGTERM, StopSignals, stopped_early
from rpo_jax.runtime.rendezvous import DistributedSetupError, join, serve
from rpo_jax.train.resume import ResumeRequest

SETTING = "RPO_JAX_COORDINATOR"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def handshake(claims: list[tuple[int, int]], timeout_s: float = 2.0) -> dict[int, str]:
    """Runs process 0 (the first claim) and the others as threads; returns each one's error ('' if none)."""
    address, outcome = f"127.0.0.1:{free_port()}", {}

    def run(index: int, process_id: int, count: int) -> None:
        try:
            if process_id == 0:
                serve(address, count, timeout_s, SETTING)
            else:
                join(address, count, process_id, timeout_s, SETTING)
            outcome[index] = ""
        except DistributedSetupError as e:
            outcome[index] = str(e)

    threads = [threading.Thread(target=run, args=(i, *claim)) for i, claim in enumerate(claims)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    return outcome


def test_handshake_lets_a_complete_job_through():
    assert handshake([(0, 3), (1, 3), (2, 3)]) == {0: "", 1: "", 2: ""}


@pytest.mark.parametrize(
    "claims, message",
    [
        ([(0, 3), (1, 3)], "only 2 of 3 processes reached the coordinator"),
        ([(0, 2), (1, 3)], "process 1 says there are 3 processes, process 0 says 2"),
        ([(0, 3), (1, 3), (1, 3)], "two processes claim process id 1"),
    ],
    ids=["missing-process", "counts-differ", "duplicate-id"],
)
def test_handshake_failures_reach_every_process_that_is_there(claims, message):
    began = time.monotonic()
    outcome = handshake(claims)
    assert outcome[0].startswith(f"{SETTING}: ") and message in outcome[0]
    assert any(message in outcome[i] for i in range(1, len(claims)))  # told by process 0
    assert time.monotonic() - began < 8


def test_handshake_without_coordinator_gives_up_after_the_timeout():
    began = time.monotonic()
    with pytest.raises(DistributedSetupError, match="did not answer within 1 s"):
        join(f"127.0.0.1:{free_port()}", 2, 1, 1.0, SETTING)
    assert 0.5 < time.monotonic() - began < 3


@pytest.mark.parametrize("address", ["localhost", "host:port", ":8476", "host:70000"])
def test_bad_coordinator_address(address):
    with pytest.raises(DistributedSetupError, match="expected HOST:PORT"):
        join(address, 2, 1, 1.0, SETTING)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RPO_JAX_COORDINATOR": "h:1", "RPO_JAX_NUM_PROCESSES": "2"}, "RPO_JAX_PROCESS_ID is not"),
        ({"RPO_JAX_NUM_PROCESSES": "2", "RPO_JAX_PROCESS_ID": "0"}, "RPO_JAX_COORDINATOR is not"),
        ({"RPO_JAX_COORDINATOR": "h:1", "RPO_JAX_NUM_PROCESSES": "two", "RPO_JAX_PROCESS_ID": "0"}, "'two'"),
        ({"RPO_JAX_COORDINATOR": "h:1", "RPO_JAX_NUM_PROCESSES": "2", "RPO_JAX_PROCESS_ID": "-1"}, "'-1'"),
        ({"RPO_JAX_COORDINATOR": "h:1", "RPO_JAX_NUM_PROCESSES": "2", "RPO_JAX_PROCESS_ID": "2"}, "0 to 1"),
    ],
)
def test_explicit_setup_is_checked(monkeypatch, env, message):
    for key in ("RPO_JAX_COORDINATOR", "RPO_JAX_NUM_PROCESSES", "RPO_JAX_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedSetupError, match=message):
        distributed.explicit_setup()


def test_init_timeout_setting(monkeypatch):
    monkeypatch.delenv("RPO_JAX_INIT_TIMEOUT", raising=False)
    assert distributed.init_timeout_s() == 300
    monkeypatch.setenv("RPO_JAX_INIT_TIMEOUT", "7")
    assert distributed.init_timeout_s() == 7
    monkeypatch.setenv("RPO_JAX_INIT_TIMEOUT", "0")
    with pytest.raises(DistributedSetupError, match="RPO_JAX_INIT_TIMEOUT='0'"):
        distributed.init_timeout_s()


def test_platform_process_count_uses_jax_cluster_detection(monkeypatch):
    """A Slurm job step of 2 tasks is a multi-process run with no RPO_JAX_* set; this machine alone is not."""
    assert distributed.platform_process_count() == 1
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    for key, value in {**slurm, "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.platform_process_count() == 2


def test_sigterm_and_first_sigint_only_ask_for_a_stop_and_a_second_sigint_is_final():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signals = StopSignals()
    with signals:
        with signals:  # nested installs keep the handlers until the outer one ends
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert signals.received == STOP_SIGTERM
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert signals.received == STOP_SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # the next Ctrl-C ends the process at once
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == STOP_SIGINT  # SIGINT's exit code wins
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_stop_says_how_to_continue(capsys):
    """`--resume` with no step already continues from the newest checkpoint: rerunning the command is enough."""

    class Checkpointer:
        directory = "run/checkpoints"

        def close(self):
            pass

    assert not stopped_early(STOP_SIGTERM, 6, 6, Checkpointer(), None)  # it went to its last step
    cases = [
        (None, "continue from it with --resume"),
        (ResumeRequest(step=4), "continue from it with --resume"),  # rerunning would resume from step 4 again
        (ResumeRequest(), "the same command continues from it"),
    ]
    for resume, advice in cases:
        assert stopped_early(STOP_SIGTERM, 3, 6, Checkpointer(), resume)
        assert f"stopped at step 3 of 6 with a checkpoint in run/checkpoints; {advice}" in capsys.readouterr().out
