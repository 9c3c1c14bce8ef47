"""Multi-host start-up: `jax.distributed.initialize()` only when the environment says this is a multi-process run.

Cloud TPU pods: JAX discovers the coordinator from the TPU metadata, so a bare `initialize()` suffices (detected
by `TPU_WORKER_HOSTNAMES` listing several workers, or `MEGASCALE_*` for multi-slice). Elsewhere (GPU clusters,
tests with several CPU processes) set RPO_JAX_COORDINATOR=host:port, RPO_JAX_NUM_PROCESSES, RPO_JAX_PROCESS_ID.
"""

from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "RPO_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "RPO_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RPO_JAX_PROCESS_ID"


def _tpu_pod() -> bool:
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(hosts) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def maybe_initialize() -> bool:
    """Initializes the distributed runtime once; returns True when this is a multi-process run."""
    if jax.distributed.is_initialized():
        return True
    coordinator = os.environ.get(ENV_COORDINATOR)
    if coordinator:
        missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if k not in os.environ]
        if missing:
            raise RuntimeError(f"{ENV_COORDINATOR} is set but {', '.join(missing)} is not")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ[ENV_NUM_PROCESSES]),
            process_id=int(os.environ[ENV_PROCESS_ID]),
        )
        return True
    if _tpu_pod():
        jax.distributed.initialize()
        return True
    return False
