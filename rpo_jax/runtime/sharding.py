"""Device mesh over (data, fsdp, tensor) and the one table mapping logical parameter axes to mesh axes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from data_pipeline.errors import UserError
from rpo_jax.config.schema import MESH_AXES, MeshConfig
from rpo_jax.runtime import distributed

# Logical axis -> mesh axis (None = replicated). Every logical name used by a parameter must appear here.
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora_rank": None,
}

# Batch rows are split over every data-parallel axis (FSDP is data parallel for activations).
BATCH_AXES = ("data", "fsdp")


class ShardingError(UserError, ValueError):
    """A parameter cannot be placed on the mesh as the rules ask."""


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 to the remaining devices and checks the product equals the device count."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ShardingError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {num_devices} available"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh; `jax.make_mesh` orders devices for the physical topology.

    The first mesh of a command is where JAX first touches devices, so one process of several joins the others
    here (`distributed.maybe_initialize`): every command that builds a mesh works multi-host."""
    distributed.maybe_initialize()
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    # Auto axes: XLA propagates shardings from the parameters/batch (GSPMD); no sharding-in-types.
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, name: str) -> PartitionSpec:
    """PartitionSpec for one parameter; raises on an unknown logical name or a non-dividing dimension."""
    if len(logical_axes) != len(shape):
        raise ShardingError(f"{name}: {len(logical_axes)} logical axes {tuple(logical_axes)} for shape {tuple(shape)}")
    spec = []
    used: set[str] = set()
    for axis_name, dim in zip(logical_axes, shape):
        if axis_name is None:
            spec.append(None)
            continue
        if axis_name not in LOGICAL_AXIS_RULES:
            raise ShardingError(f"{name}: logical axis {axis_name!r} has no rule in LOGICAL_AXIS_RULES")
        mesh_axis = LOGICAL_AXIS_RULES[axis_name]
        if mesh_axis is None or mesh.shape[mesh_axis] == 1 or mesh_axis in used:
            spec.append(None)
            continue
        if dim % mesh.shape[mesh_axis]:
            raise ShardingError(
                f"{name}: dimension {axis_name}={dim} does not divide mesh axis {mesh_axis}={mesh.shape[mesh_axis]}"
            )
        used.add(mesh_axis)
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding for every Variable in an (abstract or concrete) NNX state, from its `logical_axes`."""

    def one(path, var):
        axes = getattr(var, "logical_axes", None)
        name = _path_name(path)
        if axes is None:
            raise ShardingError(f"{name}: parameter has no logical_axes metadata")
        return var.replace(NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, name)))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated_fraction(state: nnx.State, shardings: nnx.State) -> float:
    """Fraction of parameter bytes that are fully replicated under `shardings`."""
    leaves = jax.tree.leaves(state)
    specs = jax.tree.leaves(shardings)
    total = replicated = 0
    for x, sharding in zip(leaves, specs):
        nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
        total += nbytes
        if all(p is None for p in sharding.spec):
            replicated += nbytes
    return replicated / max(total, 1)


def check_sufficiently_sharded(state: nnx.State, shardings: nnx.State, mesh: Mesh, max_fraction: float) -> None:
    """With fsdp > 1, fails when more than `max_fraction` of parameter bytes would be replicated."""
    if mesh.shape["fsdp"] <= 1:
        return
    frac = replicated_fraction(state, shardings)
    if frac > max_fraction:
        raise ShardingError(
            f"{frac:.1%} of parameter bytes are replicated on mesh {dict(mesh.shape)}; "
            f"mesh.max_replicated_fraction is {max_fraction:.1%}"
        )


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways batch rows are split: the product of the `BATCH_AXES` sizes."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    """Per field: leading (batch) axis split over `BATCH_AXES`, the rest replicated."""
    return {k: NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (v.ndim - 1)))) for k, v in batch.items()}


def init_sharded(make_module: Callable[[], nnx.Module], mesh: Mesh, max_replicated_fraction: float = 1.0):
    """Creates a module directly in its sharding: abstract shapes first, then a jit with out_shardings.

    Returns (graphdef, state, shardings). No full copy of the parameters ever exists on one device.
    """
    abstract = nnx.eval_shape(make_module)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)
    check_sufficiently_sharded(abstract_state, shardings, mesh, max_replicated_fraction)

    def create():
        return nnx.split(make_module())[1]

    state = jax.jit(create, out_shardings=shardings)()
    return graphdef, state, shardings
