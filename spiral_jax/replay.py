"""An on-device replay of generated canvases for the discriminator's fake side.

SPIRAL (Ganin et al., ICML 2018, Sec. 4) gives each discriminator a replay of the
agent's recent final canvases, 20 batches, sampled uniformly: D then sees fakes from
a short window of past policies rather than only the newest, which damps the
oscillation between agent and D. Conditional agents also store the target each
canvas was painted for, since the D judges (canvas, target) pairs.

The replay is a fixed-size ring buffer in a `flax.struct` dataclass; `add` and
`sample` are pure and jittable. Nothing in them communicates across devices, so
inside ``jax.shard_map`` each device keeps its own replay of its own episodes:
shard ``canvases``/``targets`` on the capacity axis and keep ``pointer`` and
``count`` replicated (every device adds the same number of canvases per step, so
they stay equal everywhere).

Storage. Canvases are 8-bit (the environment quantises them to k/255, as SPIRAL
does), so ``uint8`` storage (the default) is lossless and takes a quarter of the
memory of float32: 20 batches of 64 canvases of 64x64x3 are 15.7 MB in uint8 and
62.9 MB in float32 (twice that with targets). Reads decode to float32 k/255 exactly
as `spiral_jax.device_data.to_float` decodes the real images, so real and fake inputs
to D share one quantisation and D cannot tell them apart by rounding. Use
``dtype=jnp.float32`` for canvases that are not 8-bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spiral_jax import device_data

Array = jax.Array

#: SPIRAL's replay size, in batches of the agent's episodes.
SPIRAL_NUM_BATCHES = 20
_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


class Replay(struct.PyTreeNode):
    """A ring buffer of canvases (and their targets when conditional).

    Slots ``[0, count)`` are filled; the next write goes to ``pointer``. Writes fill
    slots 0, 1, 2, ... in order and wrap around, so the filled slots are always a
    prefix and, once full, the oldest canvas is the one at ``pointer``.
    """

    canvases: Array  # [capacity, H, W, C], uint8 (k/255 codes) or float32 in [0, 1]
    targets: Array | None  # same shape and dtype, or None (unconditional)
    pointer: Array  # int32 [], next slot written
    count: Array  # int32 [], filled slots, <= capacity

    @property
    def capacity(self) -> int:
        return int(self.canvases.shape[0])

    @property
    def conditional(self) -> bool:
        return self.targets is not None


def init(
    capacity: int,
    canvas_shape: tuple[int, int, int],
    *,
    conditional: bool = False,
    dtype: Any = jnp.uint8,
) -> Replay:
    """An empty replay of ``capacity`` canvases of ``canvas_shape`` (H, W, C).

    SPIRAL: ``capacity = SPIRAL_NUM_BATCHES * batch_size``.
    """
    if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    if len(canvas_shape) != 3 or not all(
        isinstance(s, (int, np.integer)) and s >= 1 for s in canvas_shape
    ):
        raise ValueError(f"canvas_shape must be (H, W, C) of positive ints, got {canvas_shape!r}")
    if np.dtype(dtype) not in _DTYPES:
        raise ValueError(f"dtype must be uint8 or float32, got {np.dtype(dtype)}")
    buffer = jnp.zeros((int(capacity),) + tuple(int(s) for s in canvas_shape), dtype)
    return Replay(
        canvases=buffer,
        targets=jnp.zeros_like(buffer) if conditional else None,
        pointer=jnp.zeros((), jnp.int32),
        count=jnp.zeros((), jnp.int32),
    )


def _encode(images: Array, dtype: Any) -> Array:
    if np.dtype(dtype) == np.uint8:
        # round() absorbs the one-ulp differences between k/255 computed different ways.
        return jnp.clip(jnp.round(images.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.uint8)
    return images.astype(jnp.float32)


def _decode(stored: Array) -> Array:
    if stored.dtype == jnp.uint8:
        return device_data.to_float(stored)
    return stored


def add(replay: Replay, canvases: Array, targets: Array | None = None) -> Replay:
    """Writes a batch [B, H, W, C] (floats in [0, 1]) at the pointer, wrapping around.

    Pure: returns the new replay. The batch size is static and at most the capacity
    (larger would overwrite part of itself).
    """
    cap = replay.capacity
    want = tuple(replay.canvases.shape[1:])
    if getattr(canvases, "ndim", None) != 4 or tuple(canvases.shape[1:]) != want:
        raise ValueError(
            f"canvases must be [B, {', '.join(map(str, want))}], "
            f"got {getattr(canvases, 'shape', None)}"
        )
    batch = canvases.shape[0]
    if not 1 <= batch <= cap:
        raise ValueError(f"batch of {batch} canvases: must be between 1 and capacity {cap}")
    if replay.conditional:
        if targets is None or tuple(targets.shape) != tuple(canvases.shape):
            got = None if targets is None else tuple(targets.shape)
            raise ValueError(
                f"a conditional replay needs targets of shape {tuple(canvases.shape)}, got {got}"
            )
    elif targets is not None:
        raise ValueError("targets were given but the replay is unconditional")

    slots = (replay.pointer + jnp.arange(batch, dtype=jnp.int32)) % cap
    new_canvases = replay.canvases.at[slots].set(
        _encode(canvases, replay.canvases.dtype), unique_indices=True
    )
    new_targets = None
    if replay.conditional:
        new_targets = replay.targets.at[slots].set(
            _encode(targets, replay.targets.dtype), unique_indices=True
        )
    return replay.replace(
        canvases=new_canvases,
        targets=new_targets,
        pointer=(replay.pointer + batch) % cap,
        count=jnp.minimum(replay.count + batch, cap),
    )


def sample_indices(replay: Replay, key: Array, batch_size: int) -> Array:
    """``batch_size`` slots drawn uniformly with replacement from the filled ones.

    An empty replay yields slot 0 (zeros): add before sampling.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.count, 1), jnp.int32)


def take(replay: Replay, indices: Array) -> tuple[Array, Array | None]:
    """The canvases (and targets) at the given slots, float32 [len(indices), H, W, C]."""
    canvases = _decode(jnp.take(replay.canvases, indices, axis=0))
    targets = None
    if replay.conditional:
        targets = _decode(jnp.take(replay.targets, indices, axis=0))
    return canvases, targets


def sample(replay: Replay, key: Array, batch_size: int) -> tuple[Array, Array | None]:
    """Draws ``batch_size`` canvases (and their targets) uniformly with replacement.

    Returns float32 [batch_size, H, W, C] in [0, 1], and the targets or None. The draw
    is a deterministic function of ``key``.
    """
    return take(replay, sample_indices(replay, key, batch_size))


def memory_bytes(capacity: int, canvas_shape: tuple[int, int, int], *, conditional: bool = False,
                 dtype: Any = jnp.uint8) -> int:
    """Bytes the replay's buffers take (for sizing; pointer and count not counted)."""
    per = int(np.prod(canvas_shape)) * np.dtype(dtype).itemsize
    return int(capacity) * per * (2 if conditional else 1)
