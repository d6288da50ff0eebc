"""The `scenes` dataset: 50,000 seeded procedural 3D scenes, rendered by the JAX renderer.

SPIRAL's scene experiment (Ganin et al. 2018, §4.1) trains on 50,000 procedurally
generated RGB scenes with up to 5 primitives each. Here scene i is a pure function of
(seed, i): `jax.random.fold_in(key(seed), i)` draws 1 to 5 objects, each with a type,
a size and a colour uniform over the action grid of `spiral_jax.envs.scenes` and a
position on the 16x16 grid, no two objects in one cell (two equal objects in one cell
would coincide, and MuJoCo's reference would z-fight). So any subset is generated
alone, in any batch size, with the same result, and nothing is downloaded.

Splits: `train` is scenes 0 .. 44,999, `test` (held out) the last 5,000, 45,000 ..
49,999. `load` returns the images as `spiral_jax.datasets.ImageDataset` (uint8
[N, W, W, 3], read as k / 255 like the environment's 8-bit canvas; labels -1, no
classes), generated in jitted, vmapped batches, and optionally cached as .npz under
`cache_dir`. `load_scenes` returns the scene descriptions themselves (for a baseline
that searches scenes, or for MuJoCo).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax.datasets import ImageDataset
from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.scene_description import Scene
from spiral_jax.envs.scene_render import render
from spiral_jax.types import is_int

NAME = "scenes"
NUM_SCENES = 50_000
NUM_HELDOUT = 5_000
MAX_PRIMITIVES = 5
SPLITS = ("train", "test")
DEFAULT_SEED = 0
# Bumped whenever the generator or the renderer changes, so stale caches are not reused.
_VERSION = 1


def random_scene(
    key: jax.Array, max_objects: int = sd.MAX_OBJECTS, max_primitives: int = MAX_PRIMITIVES
) -> Scene:
    """One random scene: 1 .. max_primitives objects in distinct cells, the rest inactive.

    Slots 0 .. n-1 hold the objects (in the order an agent would add them); inactive
    slots are all zeros. Pure; vmap it over keys.
    """
    if not is_int(max_primitives) or not 1 <= max_primitives <= min(max_objects, 256):
        raise ValueError(
            f"max_primitives={max_primitives!r} must be an int in [1, {min(max_objects, 256)}]"
        )
    # Two draws of uniforms, turned into integers by flooring (one random call each
    # compiles far faster than a randint per part).
    k_pos, k_parts = jax.random.split(key)
    n = max_objects

    def level(u: jax.Array, count: int) -> jax.Array:
        return jnp.minimum(jnp.floor(u * count), count - 1).astype(jnp.int32)

    u = jax.random.uniform(k_parts, (1 + 5 * n,))
    num = 1 + level(u[0], max_primitives)
    active = jnp.arange(n) < num
    # The cells of the largest of 256 uniforms: a uniform subset of distinct cells.
    _, cells = jax.lax.top_k(jax.random.uniform(k_pos, (sd.GRID_WIDTH**2,)), max_primitives)
    scene = Scene(
        shape=level(u[1:1 + n], len(sd.SHAPES)),
        position=jnp.zeros((n,), jnp.int32).at[:max_primitives].set(cells.astype(jnp.int32)),
        size=level(u[1 + n:1 + 2 * n], len(sd.SIZE_VALUES)),
        color=level(u[1 + 2 * n:].reshape(n, 3), len(sd.COLOR_LEVELS)),
        active=active,
    )
    keep = lambda x: jnp.where(active.reshape(active.shape + (1,) * (x.ndim - 1)), x, 0)  # noqa: E731
    return scene.replace(
        shape=keep(scene.shape),
        position=keep(scene.position),
        size=keep(scene.size),
        color=keep(scene.color),
    )


def split_indices(split: str, max_examples: int | None = None) -> np.ndarray:
    """Scene indices of a split (train: 0 .. 44,999; test: 45,000 .. 49,999)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split of {NAME!r}; allowed: {SPLITS}")
    if max_examples is not None and (not is_int(max_examples) or max_examples < 1):
        raise ValueError(f"max_examples={max_examples!r} must be None or a positive int")
    start, stop = (0, NUM_SCENES - NUM_HELDOUT) if split == "train" else (
        NUM_SCENES - NUM_HELDOUT, NUM_SCENES)
    if max_examples is not None:
        stop = min(stop, start + max_examples)
    return np.arange(start, stop, dtype=np.int64)


@functools.cache
def _scene_fn(max_objects: int):
    def one(seed: jax.Array, index: jax.Array) -> Scene:
        return random_scene(jax.random.fold_in(jax.random.key(seed), index), max_objects)

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


@functools.cache
def _image_fn(width: int, samples: int):
    def one(scene: Scene) -> jax.Array:
        return jnp.round(render(scene, width, samples) * 255.0).astype(jnp.uint8)

    return jax.jit(jax.vmap(one))


GENERATE_BATCH = 512
"""Scenes generated per jitted call (requests are padded to it, so it compiles once)."""


def scenes_at(indices: np.ndarray, seed: int = DEFAULT_SEED,
              max_objects: int = sd.MAX_OBJECTS) -> Scene:
    """The scenes with these global indices (a batched Scene of numpy arrays)."""
    fn = _scene_fn(int(max_objects))
    seed = jnp.asarray(seed, jnp.uint32)
    indices = np.asarray(indices, np.int64)
    return _in_batches(indices, GENERATE_BATCH,
                       lambda idx: fn(seed, jnp.asarray(idx, jnp.int32)))


def render_uint8(scenes: Scene, width: int, samples: int = 1) -> jax.Array:
    """A batch of scenes as uint8 [B, W, W, 3] (k / 255 is the environment's canvas)."""
    return _image_fn(int(width), int(samples))(scenes)


def _in_batches(indices: np.ndarray, batch_size: int, fn: Any) -> Any:
    """fn over fixed-size batches of indices (the last one padded), so fn compiles once;
    the results (arrays or pytrees of arrays) are concatenated as numpy."""
    out = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        padded = np.pad(chunk, (0, batch_size - len(chunk)), mode="edge")
        n = len(chunk)
        out.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], fn(padded)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *out)


def load_scenes(split: str = "train", *, max_examples: int | None = None,
                seed: int = DEFAULT_SEED, max_objects: int = sd.MAX_OBJECTS) -> Scene:
    """The scene descriptions of a split, as a batched Scene of numpy arrays."""
    return scenes_at(split_indices(split, max_examples), seed, max_objects)


def load(
    split: str = "train",
    *,
    image_size: int = 64,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = DEFAULT_SEED,
    samples: int = 1,
    batch_size: int = 500,
) -> ImageDataset:
    """Renders (or reads from `cache_dir`) one split as an ImageDataset.

    Args:
      split: "train" (45,000 scenes) or the held-out "test" (5,000).
      image_size: the canvas width the environment renders at.
      max_examples: keep only the first `max_examples` scenes of the split.
      cache_dir: if given, the uint8 images are saved there as .npz and reused by later
        calls with the same split, size, samples, seed and max_examples.
      seed: the dataset's seed (0 is *the* dataset; others give other scene sets).
      samples: rays per pixel side, as `Scenes(samples=...)`; match the environment.
      batch_size: scenes rendered per jitted call.

    Returns:
      ImageDataset(name="scenes", images uint8 [N, W, W, 3], labels -1, indices = the
      scenes' global indices, num_classes None).
    """
    idx = split_indices(split, max_examples)
    for name, v in (("image_size", image_size), ("samples", samples),
                    ("batch_size", batch_size), ("seed", seed)):
        lowest = 0 if name == "seed" else 1
        if not is_int(v) or v < lowest:
            raise ValueError(f"{name}={v!r} must be an int >= {lowest}")
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / (
            f"{NAME}-{split}-seed{seed}-s{image_size}-ss{samples}-n{max_examples}-v{_VERSION}.npz"
        )
        if cache_path.exists():
            with np.load(cache_path) as z:
                return ImageDataset(NAME, split, z["images"], z["labels"], z["indices"], None)

    def images_of(batch: np.ndarray) -> jax.Array:
        return render_uint8(jax.tree.map(jnp.asarray, scenes_at(batch, seed)), image_size, samples)

    images = _in_batches(idx, min(batch_size, len(idx)), images_of)
    labels = np.full(len(idx), -1, np.int32)
    dataset = ImageDataset(NAME, split, images, labels, idx, None)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels, indices=idx)
        os.replace(tmp, cache_path)
    return dataset
