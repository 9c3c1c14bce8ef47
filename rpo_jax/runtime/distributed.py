"""Multi-host start-up: `jax.distributed.initialize()` whenever this is one process of several.

Two ways to say so:
- RPO_JAX_COORDINATOR=host:port, RPO_JAX_NUM_PROCESSES=N, RPO_JAX_PROCESS_ID=i (GPU clusters, several CPU
  processes in tests). The processes first shake hands on that port (`rendezvous`), so a wrong count or id, or a
  coordinator that never answers, stops every process with a one-line error within RPO_JAX_INIT_TIMEOUT seconds
  (default 300) instead of a hang or JAX's abort.
- The platform: JAX's own cluster detection (what a bare `jax.distributed.initialize()` uses: Cloud TPU VM
  metadata or TPU_WORKER_HOSTNAMES, multi-slice MEGASCALE_*, Slurm, Open MPI, Kubernetes) reports several
  processes. A single-host TPU VM reports one and is left alone. Across slices, `mesh.dcn_data` lays the mesh's
  data axis over them (`multislice`).

Each process of a multi-process run prints one line saying which process it is. JAX's preemption service is
turned off: its C++ SIGTERM handler would swallow SIGTERM before the trainer's own handler is installed, and the
trainer agrees on a stop step itself (`preemption`).
"""

from __future__ import annotations

import os
import socket

import jax

from rpo_jax.runtime.rendezvous import DistributedSetupError, join, serve

ENV_COORDINATOR = "RPO_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "RPO_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RPO_JAX_PROCESS_ID"
ENV_INIT_TIMEOUT = "RPO_JAX_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT_S = 300


def _env_int(name: str, minimum: int) -> int:
    text = os.environ.get(name, "")
    if not text.strip().lstrip("-").isdigit() or int(text) < minimum:
        raise DistributedSetupError(f"{name}={text!r}: expected an integer >= {minimum}")
    return int(text)


def init_timeout_s() -> int:
    """Seconds the processes wait for each other at start-up (RPO_JAX_INIT_TIMEOUT)."""
    return _env_int(ENV_INIT_TIMEOUT, 1) if os.environ.get(ENV_INIT_TIMEOUT) else DEFAULT_INIT_TIMEOUT_S


def explicit_setup() -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from RPO_JAX_*, checked; None when RPO_JAX_COORDINATOR is unset."""
    coordinator = os.environ.get(ENV_COORDINATOR, "")
    if not coordinator:
        stray = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if os.environ.get(k)]
        if stray:
            raise DistributedSetupError(f"{', '.join(stray)} is set but {ENV_COORDINATOR} is not")
        return None
    missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not os.environ.get(k)]
    if missing:
        raise DistributedSetupError(f"{ENV_COORDINATOR} is set but {', '.join(missing)} is not")
    num_processes, process_id = _env_int(ENV_NUM_PROCESSES, 1), _env_int(ENV_PROCESS_ID, 0)
    if process_id >= num_processes:
        raise DistributedSetupError(
            f"{ENV_PROCESS_ID}={process_id} with {ENV_NUM_PROCESSES}={num_processes}: ids run from 0 to "
            f"{num_processes - 1}"
        )
    return coordinator, num_processes, process_id


def platform_process_count() -> int:
    """How many processes the platform says this job has: JAX's cluster detection, 1 when none is found."""
    from jax._src import clusters  # the detection `jax.distributed.initialize()` runs when given no arguments

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return int(env.get_process_count())
    return 1


def maybe_initialize() -> bool:
    """Initializes the distributed runtime once; returns True when this is a multi-process run."""
    if jax.distributed.is_initialized():
        return True
    explicit = explicit_setup()
    if explicit is not None and explicit[1] == 1:
        return False
    if explicit is None and platform_process_count() <= 1:
        return False
    timeout = init_timeout_s()
    jax.config.update("jax_enable_preemption_service", False)
    if explicit is None:
        jax.distributed.initialize(initialization_timeout=timeout)
    else:
        coordinator, num_processes, process_id = explicit
        if process_id == 0:
            serve(coordinator, num_processes, timeout, ENV_COORDINATOR)
        else:
            join(coordinator, num_processes, process_id, timeout, ENV_COORDINATOR)
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout,
        )
    print(describe_process(), flush=True)
    return True


def describe_process() -> str:
    """One line per host: which process this is, where, and which devices it drives."""
    local = jax.local_devices()
    return (
        f"rpo-jax: process {jax.process_index()} of {jax.process_count()} on {socket.gethostname()}: "
        f"{len(local)} of {jax.device_count()} {local[0].platform} devices "
        f"(ids {', '.join(str(d.id) for d in local)})"
    )


def _client():
    # The coordination service's key-value store (the client `jax.distributed.initialize()` made); Orbax reaches
    # it the same way. Only called in multi-process runs.
    return jax._src.distributed.global_state.client


def publish(key: str, value: str) -> None:
    """Makes `value` visible to every process under `key` (multi-process runs)."""
    _client().key_value_set(f"rpo_jax/{key}", value)


def wait_for(key: str) -> str:
    """Blocks until some process has published `key`, however long that takes (tokenizing a large dataset can
    take hours); if the publisher dies, JAX's heartbeat check ends this process instead."""
    while True:
        try:
            return _client().blocking_key_value_get(f"rpo_jax/{key}", 60_000)
        except Exception as e:  # a timeout of this one wait: wait again
            if "DEADLINE_EXCEEDED" not in str(e):
                raise
