"""Remat (activation checkpointing) policies under MaxText's names, and whether this backend honours offloading.

Each decoder layer runs under `jax.checkpoint` with the policy named by `model.remat_policy`; what a policy saves
is kept from the forward, everything else is recomputed in the backward:
  none                 no remat: every intermediate is kept (fastest, most memory)
  minimal              matmul outputs without batch dimensions (the q/k/v/o and MLP projections)
  save_qkv_proj        the q, k, v projections only (named in `model.decoder_layer`)
  save_dot_except_mlp  the q, k, v and output projections
  full                 nothing but the layer input: the whole layer is recomputed
  minimal_offloaded    `minimal`, but the saved matmul outputs live in host memory

XLA:CPU accepts the host-placement annotations of `minimal_offloaded` and silently drops them (measured with jax
0.10.2), so an accepted policy proves nothing: `check_remat_policy_supported` compiles a tiny offloading program
and looks for buffers in XLA's host memory space in the compiled HLO.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.config.schema import ConfigError

# XLA prints a buffer placed in host memory with memory space 5 in its layout, e.g. `f32[16,16]{1,0:S(5)}`.
HOST_MEMORY_SPACE = re.compile(r"S\(5\)")
OFFLOADING = "minimal_offloaded"
QKV_NAMES = ("query_proj", "key_proj", "value_proj")


def remat_policy(name: str):
    """Maps a `model.remat_policy` name to a `jax.checkpoint` policy (None = no remat)."""
    cp = jax.checkpoint_policies
    policies = {
        "none": None,
        "minimal": cp.dots_with_no_batch_dims_saveable,
        "save_qkv_proj": cp.save_only_these_names(*QKV_NAMES),
        "save_dot_except_mlp": cp.save_only_these_names(*QKV_NAMES, "out_proj"),
        "full": cp.nothing_saveable,
        # Keeps matmul outputs but in host memory; only backends with a host memory space honour it.
        OFFLOADING: cp.offload_dot_with_no_batch_dims("device", "pinned_host"),
    }
    return policies[name]


def compiled_uses_host_memory(hlo_text: str) -> bool:
    return bool(HOST_MEMORY_SPACE.search(hlo_text))


def offload_error(platform: str) -> ConfigError:
    return ConfigError(
        f"model.remat_policy={OFFLOADING}: the {platform} backend does not place remat residuals in host memory "
        "(the compiled program has no host-memory buffers), so the policy would silently act as plain "
        "minimal; choose model.remat_policy minimal, save_dot_except_mlp or full on this backend"
    )


def check_remat_policy_supported(policy_name: str, mesh: Mesh) -> None:
    """Raises a `ConfigError` naming `model.remat_policy` when offloading is asked for but not compiled in."""
    if policy_name != OFFLOADING:
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
