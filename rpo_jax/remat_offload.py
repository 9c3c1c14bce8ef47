"""Does this backend honour `model.remat_policy=offload_dots`? XLA:CPU accepts the host-placement annotations
and silently drops them (measured with jax 0.10.2), so an accepted policy proves nothing: compile a tiny
offloading program and look for buffers in XLA's host memory space in the compiled HLO."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.config import ConfigError
from rpo_jax.model import remat_policy

# XLA prints a buffer placed in host memory with memory space 5 in its layout, e.g. `f32[16,16]{1,0:S(5)}`.
HOST_MEMORY_SPACE = re.compile(r"S\(5\)")


def compiled_uses_host_memory(hlo_text: str) -> bool:
    return bool(HOST_MEMORY_SPACE.search(hlo_text))


def offload_error(platform: str) -> ConfigError:
    return ConfigError(
        f"model.remat_policy=offload_dots: the {platform} backend does not place remat residuals in host memory "
        "(the compiled program has no host-memory buffers), so the policy would silently act as plain "
        "save_dots_no_batch; choose model.remat_policy full, save_dots or save_dots_no_batch on this backend"
    )


def check_remat_policy_supported(policy_name: str, mesh: Mesh) -> None:
    """Raises a `ConfigError` naming `model.remat_policy` when offloading is asked for but not compiled in."""
    if policy_name != "offload_dots":
        return
    replicated = NamedSharding(mesh, PartitionSpec())

    def residual_heavy(w_DD, x_ND):
        def f(w, x):
            return jnp.sum(jnp.sin(x @ w) @ w)  # x @ w is a no-batch-dims dot: its output is offloaded

        return jax.grad(jax.checkpoint(f, policy=remat_policy(policy_name)))(w_DD, x_ND)

    probe = jax.ShapeDtypeStruct((16, 16), jnp.float32, sharding=replicated)
    compiled = jax.jit(residual_heavy).lower(probe, probe).compile()
    if not compiled_uses_host_memory(compiled.as_text()):
        raise offload_error(mesh.devices.flat[0].platform)
