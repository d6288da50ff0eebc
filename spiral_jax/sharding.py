"""Data and member parallelism on a two-axis mesh, with per-example randomness that
ignores the device count.

The mesh has a `MEMBERS` axis, over which a population's members are split (each
device holds `size / member_shards` of them; a single agent has one shard), and an
`AXIS` ("data") axis, over which each member's batch is split: parameters and optimiser
states are replicated over `AXIS`, each device rolls out its share of the global batch,
and gradients are averaged with `lax.pmean`. Every random draw is made per *example*
from keys split over the global batch (`global_keys`), so a step on n devices equals
the step on one device with the same global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from spiral_jax.types import Array

AXIS = "data"
MEMBERS = "members"  # the mesh axis a population's members are split over


def make_mesh(devices: Any = None, member_shards: int = 1) -> Mesh:
    """A (`MEMBERS`, `AXIS`) mesh over `devices` (default: all devices of all
    processes): `member_shards` rows of devices, each splitting its members' batches."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    if member_shards < 1 or devices.size % member_shards:
        raise ValueError(f"member_shards={member_shards} must divide the number of "
                         f"devices ({devices.size})")
    return Mesh(devices.reshape(member_shards, -1), (MEMBERS, AXIS))


def member_axis(mesh: Mesh) -> str | None:
    """`MEMBERS` where the mesh has it (a one-axis data mesh does not)."""
    return MEMBERS if MEMBERS in mesh.axis_names else None


def axis_size(mesh: Mesh, name: str | None) -> int:
    """Devices along mesh axis `name` (1 for None or an axis the mesh lacks)."""
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


def global_keys(key: Array, n_global: int) -> Array:
    """This device's slice of `split(key, n_global)` (inside `shard_map` over AXIS)."""
    keys = jax.random.split(key, n_global)
    per_device = n_global // jax.lax.axis_size(AXIS)
    start = jax.lax.axis_index(AXIS) * per_device
    return jax.lax.dynamic_slice_in_dim(keys, start, per_device)
