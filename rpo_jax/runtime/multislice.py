"""Multislice meshes: data parallelism across TPU slices, the other axes inside each slice.

Chips of one slice talk over ICI; slices reach each other only over the data-center network (DCN), several times
slower. So the traffic that crosses slices should be the one collective data parallelism needs, the gradient
all-reduce once per step, while FSDP's weight gathers / gradient scatters (every layer) and tensor parallelism's
activation collectives stay on ICI. With `mesh.dcn_data = N` the mesh's `data` axis is N × `mesh.data`, each slice a
contiguous block of it, and `fsdp` / `tensor` never leave a slice; the logical-axis rules (`sharding`) are unchanged
because the batch is split over `data` (now spanning slices) and no parameter is split over it.

`jax.experimental.mesh_utils.create_hybrid_device_mesh` builds that device grid: it groups the devices by their
`slice_index` (set on multislice TPU devices), orders each slice for its ICI topology, and stacks the slices along the
DCN axis. Devices that carry no slice index (GPU hosts, simulated CPU devices) are grouped by `slice_of` instead: one
slice per process by default; `rpo-jax plan` (and the tests) cut simulated devices into equal consecutive slices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

SliceOf = Callable[[jax.Device], int]


def default_slice_of(device: jax.Device) -> int:
    """The TPU slice a device is on, else its process: the unit that only DCN connects to the others."""
    return getattr(device, "slice_index", device.process_index)


def consecutive_slices(devices: Sequence[jax.Device], num_slices: int) -> SliceOf:
    """`devices`, in order, cut into `num_slices` equal consecutive slices (simulated devices for `rpo-jax plan`)."""
    per_slice = len(devices) // num_slices
    position = {device.id: i for i, device in enumerate(devices)}
    return lambda device: position[device.id] // per_slice


def tpu_slice_count(devices: Sequence[jax.Device]) -> int:
    """How many TPU slices `devices` span (1 for devices without a slice index)."""
    return len({getattr(device, "slice_index", 0) for device in devices})


def slice_sizes(devices: Sequence[jax.Device], slice_of: SliceOf) -> dict[int, int]:
    """Slice -> how many of `devices` it holds."""
    return dict(Counter(slice_of(device) for device in devices))


class _SliceTagged:
    """A device seen with the slice `slice_of` gives it: `create_hybrid_device_mesh` groups by `slice_index`, which
    only multislice TPU devices carry. Every other attribute (platform, device_kind, coords, ...) is the device's,
    so each slice is still laid out for its physical topology."""

    def __init__(self, device: jax.Device, slice_index: int):
        self.device = device
        self.slice_index = slice_index

    def __getattr__(self, name: str):
        return getattr(self.__dict__["device"], name)


def hybrid_device_grid(
    slice_shape: Sequence[int], num_slices: int, devices: Sequence[jax.Device], slice_of: SliceOf
) -> np.ndarray:
    """Devices shaped (num_slices × slice_shape[0], *slice_shape[1:]): slice k is block k of the first axis.

    The caller checks that `slice_of` puts `prod(slice_shape)` devices in each of `num_slices` slices."""
    tagged = [_SliceTagged(device, slice_of(device)) for device in devices]
    dcn_shape = (num_slices,) + (1,) * (len(slice_shape) - 1)
    # allow_split_physical_axes: a mesh axis that is not a product of whole physical axes of the slice is laid out
    # by splitting one (as `jax.make_mesh` does on v5e) rather than refused; shapes that fit are laid out unsplit.
    grid = mesh_utils.create_hybrid_device_mesh(slice_shape, dcn_shape, tagged, allow_split_physical_axes=True)
    return np.vectorize(lambda t: t.device, otypes=[object])(grid)
