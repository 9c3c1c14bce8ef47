"""The mesh `rpo-jax plan` compiles: the run config's mesh with its -1 axis resolved the way training resolves it
(`runtime.sharding.mesh_shape`, within each of `mesh.dcn_data` slices), but against the devices being planned for
rather than only those present.

`planned_device_count` touches JAX only when it has to ask it (no `--devices`), so that `runtime.cpu_devices` can
still set the simulated CPU device count before JAX starts.
"""

from __future__ import annotations

import dataclasses

from rpo_jax.config.schema import MESH_AXES, Config, ConfigError


def planned_device_count(requested: int | None, topology: str, num_slices: int = 1) -> tuple[int, str]:
    """How many devices the mesh spreads over (all `num_slices` slices together), and where that number comes from:
    `requested` (`--devices`), else `num_slices` of the TPU slice `topology` where the backend can describe it, else
    every device JAX sees on this machine (what `rpo-jax train` would use here)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--devices {requested}: must be at least 1")
        return requested, f"--devices {requested}"
    import jax

    if topology and jax.default_backend() == "tpu":
        count = len(tpu_topology_devices(topology, num_slices))
        slices = f"{num_slices} slices of " if num_slices > 1 else ""
        return count, f"the {count} devices of {slices}TPU topology {topology}"
    count = jax.device_count()
    return count, f"the {count} {jax.default_backend()} device(s) JAX sees on this machine"


def resolve_plan_mesh(cfg: Config, device_count: int, source: str) -> tuple[Config, str]:
    """`cfg` with every mesh axis an explicit size for `device_count` devices, and a line saying which mesh that is
    and why. A mesh whose sizes do not multiply to `device_count` is refused, naming where the count came from."""
    from rpo_jax.runtime.sharding import ShardingError, mesh_shape

    given = {axis: getattr(cfg.mesh, axis) for axis in MESH_AXES}
    try:
        sizes = dict(zip(MESH_AXES, mesh_shape(cfg.mesh, device_count)))
    except ShardingError as err:
        raise ShardingError(f"{err} (devices counted from {source})") from None
    resolved = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, **sizes))
    slices = cfg.mesh.dcn_data
    per_slice = (
        "" if slices == 1 else f" in each of {slices} slices (mesh.dcn_data; data axis {slices * sizes['data']})"
    )
    auto = [axis for axis, size in given.items() if size == -1]
    if not auto:
        return resolved, f"{sizes}{per_slice} as given (--mesh or the config's mesh section)"
    axis = auto[0]
    return resolved, (
        f"{axis}=-1 of {given} resolved to {axis}={sizes[axis]}{per_slice} for {source} "
        "(--devices N or --mesh data=..,fsdp=..,tensor=.. plans another)"
    )


def tpu_topology_devices(topology: str, num_slices: int) -> list:
    """Compile-only devices of `num_slices` slices of TPU `topology` (they carry `slice_index`, as on a pod)."""
    from jax.experimental import topologies

    extra = {"num_slices": num_slices} if num_slices > 1 else {}
    return list(topologies.get_topology_desc(topology, "tpu", **extra).devices)
