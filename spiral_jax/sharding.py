"""Data parallelism: one mesh axis, per-example randomness that ignores the device count.

Parameters and optimiser states are replicated over the `AXIS` axis of a one-axis
`Mesh`; each device rolls out its share of the global batch, and gradients are averaged
with `lax.pmean`. Every random draw is made per *example* from keys split over the
global batch (`global_keys`), so a step on n devices equals the step on one device
with the same global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from spiral_jax.types import Array

AXIS = "data"


def make_mesh(devices: Any = None) -> Mesh:
    """A one-axis mesh over `devices` (default: all devices of all processes)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (AXIS,))


def global_keys(key: Array, n_global: int) -> Array:
    """This device's slice of `split(key, n_global)` (inside `shard_map` over AXIS)."""
    keys = jax.random.split(key, n_global)
    per_device = n_global // jax.lax.axis_size(AXIS)
    start = jax.lax.axis_index(AXIS) * per_device
    return jax.lax.dynamic_slice_in_dim(keys, start, per_device)
