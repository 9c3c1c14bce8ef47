"""The mesh `rpo-jax plan` compiles: the run config's mesh with its -1 axis resolved the way training resolves it
(`runtime.sharding.mesh_shape`), but against the devices being planned for rather than only those present.

`planned_device_count` touches JAX only when it has to ask it (no `--devices`), so that `runtime.cpu_devices` can
still set the simulated CPU device count before JAX starts.
"""

from __future__ import annotations

import dataclasses

from rpo_jax.config.schema import MESH_AXES, Config, ConfigError


def planned_device_count(requested: int | None, topology: str) -> tuple[int, str]:
    """How many devices a -1 mesh axis spreads over, and where that number comes from: `requested` (`--devices`),
    else the TPU `topology` where the backend can describe it, else every device JAX sees on this machine (what
    `rpo-jax train` would use here)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--devices {requested}: must be at least 1")
        return requested, f"--devices {requested}"
    import jax

    if topology and jax.default_backend() == "tpu":
        from jax.experimental import topologies

        count = len(topologies.get_topology_desc(topology, "tpu").devices)
        return count, f"the {count} devices of TPU topology {topology}"
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
    auto = [axis for axis, size in given.items() if size == -1]
    if not auto:
        return resolved, f"{sizes} as given (--mesh or the config's mesh section)"
    axis = auto[0]
    return resolved, (
        f"{axis}=-1 of {given} resolved to {axis}={sizes[axis]} for {source} "
        "(--devices N or --mesh data=..,fsdp=..,tensor=.. plans another)"
    )
