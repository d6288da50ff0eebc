"""Real images on the accelerator: ``DeviceDataset``, ``to_device`` and in-``jit`` sampling.

``to_device`` puts a preprocessed dataset (a ``spiral_jax.datasets.ImageDataset``) on the
accelerator as uint8 (replicated, or sharded over a mesh axis) in a ``DeviceDataset`` (a
``flax.struct`` dataclass that can live in a train state), and
``sample(images, key, batch_size)`` draws a float32 batch inside ``jit`` with no host
round trip; ``to_float`` decodes uint8 to float32 as exactly ``k / 255``, the values
of the environments' 8-bit canvas.

Memory as uint8 at 64x64 (N * 64 * 64 * C bytes; ``memory_bytes`` computes it)::

    dataset    split        N        C   64x64 uint8   (at 28x28)
    mnist5k    train         4,000   1     16.4 MB      3.1 MB
    mnist      train        60,000   1    245.8 MB     47.0 MB
    omniglot   train        19,280   1     79.0 MB
    celeb_a    train       162,770   3      2.00 GB
    celeb_a    all splits  202,599   3      2.49 GB

``to_device`` refuses (``ValueError``, before anything is copied) a dataset whose
per-device share exceeds ``memory_fraction`` of the device's memory, where the device
reports its memory (GPU, TPU; the CPU backend does not, and then no check is made). The
message names the size and the fixes: ``datasets.load(..., max_examples=K)`` (a prefix of
the split; every split is stored in a fixed random order, so a prefix is a random
subset), sharding over a mesh axis, or a smaller ``image_size``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from spiral_jax.datasets import ImageDataset


@flax.struct.dataclass
class DeviceDataset:
    """A preprocessed dataset held on device; a pytree, so it can sit in a train state.

    ``images``: uint8 [N, H, W, C] (255 = white). ``labels``: int32 [N] (-1 = none).
    """

    images: jax.Array
    labels: jax.Array

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    def sample(self, key: jax.Array, batch_size: int) -> jax.Array:
        """float32 [batch_size, H, W, C] in [0, 1]; see ``sample``."""
        return sample(self.images, key, batch_size)

    def sample_with_labels(
        self, key: jax.Array, batch_size: int
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(images float32, labels int32, indices int32); see ``sample_with_labels``."""
        return sample_with_labels(self, key, batch_size)


def _check_sample_args(images: Any, batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size={batch_size!r} must be a Python int (static shape)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if images.dtype != jnp.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be uint8 [N, H, W, C], got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] < 1:
        raise ValueError("images holds no examples (N = 0)")


def _indices(key: jax.Array, batch_size: int, n: int) -> jax.Array:
    # Uniform with replacement: O(batch) per step, where without replacement would need
    # a permutation of all N (162k for CelebA) on every step.
    return jax.random.randint(key, (batch_size,), 0, n, dtype=jnp.int32)


# k / 255 correctly rounded to float32, for every k. A table lookup rather than a
# division because XLA may turn division by a constant into a multiplication by its
# reciprocal, which is one ulp off for some k; the lookup matches numpy exactly.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def to_float(images_uint8: jax.Array) -> jax.Array:
    """uint8 -> float32 in [0, 1], exactly ``k / 255``, as ``datasets.to_float_np`` and the
    canvas."""
    return jnp.asarray(_UINT8_TO_FLOAT)[images_uint8]


def sample(images: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
    """Draws ``batch_size`` images uniformly with replacement; pure, works inside jit.

    Args:
      images: uint8 [N, H, W, C] on device (``DeviceDataset.images``). Inside
        ``shard_map`` over a sharded dataset, pass the local shard and a per-device key
        (e.g. ``jax.random.fold_in(key, lax.axis_index(axis))``): each device then
        samples from its own shard, with no communication.
      key: a PRNG key; the batch is a deterministic function of it.
      batch_size: static Python int.

    Returns:
      float32 [batch_size, H, W, C] in [0, 1].
    """
    _check_sample_args(images, batch_size)
    return to_float(jnp.take(images, _indices(key, batch_size, images.shape[0]), axis=0))


def sample_with_labels(
    dataset: DeviceDataset, key: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """As ``sample``, also returning the labels and the drawn indices (same key gives the
    same images as ``sample(dataset.images, key, batch_size)``). Conditional agents use
    the images as targets and the labels for per-class statistics."""
    _check_sample_args(dataset.images, batch_size)
    idx = _indices(key, batch_size, dataset.images.shape[0])
    return (
        to_float(jnp.take(dataset.images, idx, axis=0)),
        jnp.take(dataset.labels, idx, axis=0),
        idx,
    )


def take_sharded(local: jax.Array, idx: jax.Array, axis: str, scatter: bool = True
                 ) -> jax.Array:
    """Rows `idx` (indices into the whole dataset) of a uint8 dataset sharded over mesh
    axis `axis` in equal contiguous blocks, as float32; inside ``shard_map``, where
    `local` is this device's block.

    `scatter=True`: `idx` are this device's own draws, and it gets their rows. Each
    device contributes the rows it holds for every device's draws (zeros elsewhere) and
    a reduce-scatter hands each device its own: adding zeros is exact, so the result
    equals ``jnp.take`` on the unsharded dataset bit for bit, at the cost of one
    reduce-scatter of the global batch. `scatter=False`: `idx` are the same on every
    device, and every device gets all the rows (a sum instead).
    """
    if jax.lax.axis_size(axis) == 1:
        return to_float(jnp.take(local, idx, axis=0))
    wanted = jax.lax.all_gather(idx, axis, tiled=True) if scatter else idx
    n = local.shape[0]
    rel = wanted - jax.lax.axis_index(axis) * n
    held = (rel >= 0) & (rel < n)
    rows = jnp.take(local, jnp.clip(rel, 0, n - 1), axis=0).astype(jnp.int32)
    rows = jnp.where(held.reshape((-1,) + (1,) * (rows.ndim - 1)), rows, 0)
    if scatter:
        rows = jax.lax.psum_scatter(rows, axis, scatter_dimension=0, tiled=True)
    else:
        rows = jax.lax.psum(rows, axis)
    return to_float(rows.astype(jnp.uint8))


def _device_memory_limit(device: jax.Device) -> int | None:
    """Bytes the device can hold, or None when the backend does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if not stats:
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def to_device(
    dataset: ImageDataset,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
    *,
    axis: str | None = None,
    memory_fraction: float = 0.5,
    global_rows: int | None = None,
) -> DeviceDataset:
    """Puts a preprocessed dataset on device as uint8.

    Args:
      dataset: from ``spiral_jax.datasets.load``.
      sharding: None puts it on the default device. A ``Mesh`` replicates it over the
        mesh, or, with ``axis``, shards the examples over that mesh axis. A
        ``NamedSharding`` is used as is; its spec must be ``P()`` or ``P(axis)``.
      axis: with a ``Mesh``, the mesh axis to shard the examples over.
      memory_fraction: refuse a dataset whose share per device exceeds this fraction of
        the device's memory (the rest is for the model, optimiser and rollouts).

    When sharded, the examples are cut to a multiple of the shard count (at most
    shards - 1 dropped) so that every device holds the same number.

    With several processes, each may pass only its own rows (``local_rows``) and
    ``global_rows``, the size of the whole set: the global array is then made from the
    processes' shares, and no process reads or holds the others'.

    Raises:
      ValueError: bad arguments, or the dataset does not fit (the message says how
        much it needs and how to make it fit), before anything is copied.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction={memory_fraction!r} must be in (0, 1]")
    P = jax.sharding.PartitionSpec
    images, labels = dataset.images, dataset.labels
    if sharding is None:
        if axis is not None:
            raise ValueError(f"axis={axis!r} needs a Mesh to shard over")
        target: jax.Device | jax.sharding.Sharding = jax.devices()[0]
        devices, shards = [jax.devices()[0]], 1
    else:
        if isinstance(sharding, jax.sharding.Mesh):
            if axis is not None and axis not in sharding.axis_names:
                raise ValueError(
                    f"axis={axis!r} is not a mesh axis; mesh axes: {sharding.axis_names}"
                )
            sharding = jax.sharding.NamedSharding(sharding, P(axis) if axis else P())
        elif isinstance(sharding, jax.sharding.NamedSharding):
            if axis is not None:
                raise ValueError("axis is given by the NamedSharding's spec; pass axis=None")
            spec = tuple(sharding.spec)
            if any(s is not None for s in spec[1:]) or (spec and isinstance(spec[0], tuple)):
                raise ValueError(
                    f"NamedSharding spec {sharding.spec} must be P() or P(axis): only the "
                    "example dimension can be sharded"
                )
            axis = spec[0] if spec else None
        else:
            raise ValueError(
                f"sharding={sharding!r} must be None, a jax.sharding.Mesh or NamedSharding"
            )
        target = sharding
        devices = list(sharding.mesh.devices.flat)
        shards = int(sharding.mesh.shape[axis]) if axis else 1
        if global_rows is not None:  # this process's share of a sharded set
            return DeviceDataset(
                images=_from_shares(images, target, global_rows),
                labels=_from_shares(labels, target, global_rows),
            )
        keep = (len(images) // shards) * shards
        if keep == 0:
            raise ValueError(f"{len(images)} examples cannot be sharded over {shards} devices")
        if keep < len(images):
            logging.warning("%s/%s: dropping %d examples to shard evenly over %d devices",
                            dataset.name, dataset.split, len(images) - keep, shards)
            images, labels = images[:keep], labels[:keep]

    per_device = math.ceil(images.nbytes / shards) + math.ceil(labels.nbytes / shards)
    for device in devices:
        limit = _device_memory_limit(device)
        if limit is not None and per_device > memory_fraction * limit:
            fit = int(memory_fraction * limit * shards // (images[0].nbytes + 4))
            raise ValueError(
                f"{dataset.name}/{dataset.split} ({len(images)} x {dataset.image_shape} "
                f"uint8) needs {per_device / 1e9:.2f} GB on each of {shards} shard(s), more "
                f"than memory_fraction={memory_fraction} of {device} "
                f"({limit / 1e9:.2f} GB). Load fewer examples (load(..., "
                f"max_examples={fit})), shard over more devices (to_device(ds, mesh, "
                "axis=...)), or use a smaller image_size."
            )
    return DeviceDataset(images=_put(images, target), labels=_put(labels, target))


def local_rows(num_examples: int, sharding: jax.sharding.NamedSharding) -> tuple[int, int]:
    """(start, stop): the rows of a set of `num_examples`, cut to a multiple of the shard
    count, that this process's devices hold under `sharding` (sharded over its first
    dimension; a process's devices hold contiguous rows)."""
    spec = tuple(sharding.spec)
    shards = int(sharding.mesh.shape[spec[0]]) if spec and spec[0] else 1
    keep = (num_examples // shards) * shards
    if keep == 0:
        raise ValueError(f"{num_examples} examples cannot be sharded over {shards} devices")
    blocks = sharding.addressable_devices_indices_map((keep,)).values()
    starts = [b[0].start or 0 for b in blocks]
    stops = [keep if b[0].stop is None else b[0].stop for b in blocks]
    return min(starts), max(stops)


def _from_shares(local: np.ndarray, target: jax.sharding.Sharding, global_rows: int
                 ) -> jax.Array:
    shards = len({(b[0].start, b[0].stop) for b in
                  target.devices_indices_map((global_rows,)).values()})
    keep = (global_rows // shards) * shards
    return jax.make_array_from_process_local_data(target, local, (keep, *local.shape[1:]))


def _put(array: np.ndarray, target: jax.Device | jax.sharding.Sharding) -> jax.Array:
    """A host array on a device or a (possibly multi-process) sharding: each process
    copies only the blocks its own devices hold."""
    if isinstance(target, jax.sharding.Sharding):
        return jax.make_array_from_callback(array.shape, target, lambda index: array[index])
    return jax.device_put(array, target)


def memory_bytes(num_examples: int, image_size: int, channels: int) -> int:
    """uint8 bytes of ``num_examples`` images of image_size^2 x channels (labels apart)."""
    return int(num_examples) * int(image_size) ** 2 * int(channels)
