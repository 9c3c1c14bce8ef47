"""Device mesh over (data, fsdp, tensor), across TPU slices too (`multislice`), and the one table mapping logical
parameter axes to mesh axes."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from data_pipeline.errors import UserError
from rpo_jax.config.schema import MESH_AXES, MeshConfig
from rpo_jax.runtime import distributed, multislice

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

# Batch rows are split over every data-parallel axis (FSDP is data parallel for activations). Across slices the
# `data` axis spans them (`multislice`): no rule names it, so no parameter is split across slices.
BATCH_AXES = ("data", "fsdp")


class ShardingError(UserError, ValueError):
    """A parameter cannot be placed on the mesh as the rules ask."""


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes within one slice: -1 resolved against the devices of a slice (all of them when
    mesh.dcn_data is 1), checked to multiply to that count."""
    if num_devices % cfg.dcn_data:
        raise ShardingError(
            f"mesh.dcn_data={cfg.dcn_data}: {num_devices} devices do not form {cfg.dcn_data} equal slices"
        )
    per_slice = num_devices // cfg.dcn_data
    in_slice = "" if cfg.dcn_data == 1 else f" per slice (mesh.dcn_data={cfg.dcn_data})"
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if per_slice % known:
            raise ShardingError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: {per_slice} devices{in_slice} not divisible by {known}"
            )
        sizes[sizes.index(-1)] = per_slice // known
    if math.prod(sizes) != per_slice:
        raise ShardingError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {per_slice} available{in_slice}"
        )
    return tuple(sizes)


def make_mesh(
    cfg: MeshConfig, devices: Sequence[jax.Device] | None = None, slice_of: multislice.SliceOf | None = None
) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh; `jax.make_mesh` orders devices for the physical topology, and across
    slices (mesh.dcn_data > 1, or TPU devices of several slices) `multislice.hybrid_device_grid` stacks the slices
    along the data axis. `slice_of` says which slice a device is on (default: its TPU slice, else its process).

    The first mesh of a command is where JAX first touches devices, so one process of several joins the others
    here (`distributed.maybe_initialize`): every command that builds a mesh works multi-host."""
    distributed.maybe_initialize()
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    # Auto axes: XLA propagates shardings from the parameters/batch (GSPMD); no sharding-in-types.
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if cfg.dcn_data > 1 or slice_of is not None or multislice.tpu_slice_count(devices) > 1:
        slice_of = slice_of or multislice.default_slice_of
        check_slices(cfg, devices, slice_of)
        grid = multislice.hybrid_device_grid(shape, cfg.dcn_data, devices, slice_of)
        return Mesh(grid, MESH_AXES, axis_types=axis_types)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def check_slices(cfg: MeshConfig, devices: Sequence[jax.Device], slice_of: multislice.SliceOf) -> None:
    """mesh.dcn_data must be the number of slices the devices are on, each holding the same number of them."""
    sizes = sorted(multislice.slice_sizes(devices, slice_of).values())
    if len(sizes) == cfg.dcn_data and len(set(sizes)) == 1:
        return
    if multislice.tpu_slice_count(devices) > 1:
        what = f"TPU slices, MEGASCALE_NUM_SLICES={os.environ.get('MEGASCALE_NUM_SLICES', '<from the VM metadata>')}"
        fix = f"set mesh.dcn_data={len(sizes)} (launch/tpu_pod.sh --num-slices {len(sizes)} does)"
    else:
        where = (
            "one per process: the devices carry no TPU slice index" if slice_of is multislice.default_slice_of else ""
        )
        what, fix = where or "slices as given", f"set mesh.dcn_data={len(sizes)}"
    if len(set(sizes)) > 1:
        fix = "slices of different sizes cannot form one mesh"
    raise ShardingError(
        f"mesh.dcn_data={cfg.dcn_data}, but the {len(devices)} devices form {len(sizes)} slice(s) ({what}) of "
        f"{sizes} devices: {fix}"
    )


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


def lookup_rows(table_VD: jax.Array, ids_BL: jax.Array, mesh: Mesh | None) -> jax.Array:
    """`table_VD[ids_BL]` (an embedding lookup) with the rows split over `BATCH_AXES` like the ids.

    The table's D is split over the `embed` axis (fsdp): each device looks up its share of D for the ids of its data
    shard (the ids are gathered within it), then one all-to-all over fsdp hands every device whole rows. Left to
    itself, GSPMD also all-gathers the looked-up rows across `data`, which on a multislice mesh (where `data` spans
    slices) sends activations over the data-center network on every micro-batch."""
    if mesh is None:
        return jnp.take(table_VD, ids_BL, axis=0)
    embed = LOGICAL_AXIS_RULES["embed"]
    ids_BL = jax.lax.with_sharding_constraint(ids_BL, NamedSharding(mesh, PartitionSpec("data", None)))
    rows_BLD = jnp.take(table_VD, ids_BL, axis=0)
    rows_BLD = jax.lax.with_sharding_constraint(rows_BLD, NamedSharding(mesh, PartitionSpec("data", None, embed)))
    return jax.lax.with_sharding_constraint(rows_BLD, NamedSharding(mesh, PartitionSpec(BATCH_AXES, None, None)))


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
