"""The `scenes` dataset: seeded, split, rendered by the JAX renderer, cached."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from spiral_jax import scene_data
from spiral_jax.datasets import ImageDataset
from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.scene_render import render_jit


def test_splits_are_the_paper_sizes_and_disjoint():
    train = scene_data.split_indices("train")
    test = scene_data.split_indices("test")
    assert len(train) == 45_000 and len(test) == 5_000
    assert train[0] == 0 and test[0] == 45_000 and test[-1] == 49_999
    assert np.intersect1d(train, test).size == 0
    assert scene_data.split_indices("test", max_examples=7).tolist() == list(range(45_000, 45_007))
    with pytest.raises(ValueError, match="split"):
        scene_data.split_indices("validation")
    with pytest.raises(ValueError, match="max_examples"):
        scene_data.split_indices("train", max_examples=0)


def test_scenes_follow_the_generator_rules_and_do_not_depend_on_batching():
    scenes = scene_data.load_scenes("train", max_examples=2000)
    count = scenes.active.sum(-1)
    assert count.min() == 1 and count.max() == scene_data.MAX_PRIMITIVES
    # Uniform over 1..5: each count is 20 % of 2,000 scenes, give or take 5 sigma (4.5 %).
    np.testing.assert_allclose(np.bincount(count)[1:] / 2000, 0.2, atol=0.045)
    # Objects fill the first slots; inactive slots are zero; cells are distinct.
    np.testing.assert_array_equal(scenes.active, np.arange(20)[None] < count[:, None])
    for name in ("shape", "position", "size"):
        assert np.all(getattr(scenes, name)[~scenes.active] == 0)
    for pos, n in zip(scenes.position[:200], count[:200], strict=True):
        assert len(set(pos[:n].tolist())) == n
    shapes = scenes.shape[scenes.active]
    np.testing.assert_allclose(np.bincount(shapes, minlength=4) / shapes.size, 0.25, atol=0.04)
    assert scenes.color[scenes.active].max() == 3 and scenes.size[scenes.active].max() == 2
    # Scene i is a function of (seed, i) alone.
    alone = scene_data.scenes_at(np.array([1234, 5]))
    for field in ("shape", "position", "size", "color", "active"):
        np.testing.assert_array_equal(np.asarray(getattr(alone, field))[0],
                                      getattr(scenes, field)[1234])
    other_seed = scene_data.scenes_at(np.array([1234]), seed=1)
    assert not np.array_equal(np.asarray(other_seed.position)[0], scenes.position[1234])


def test_load_renders_the_scenes_and_caches_them(tmp_path):
    ds = scene_data.load("test", image_size=16, max_examples=5, batch_size=4,
                         cache_dir=tmp_path)
    assert isinstance(ds, ImageDataset)
    assert ds.name == "scenes" and ds.split == "test" and ds.num_classes is None
    assert ds.images.shape == (5, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.indices.tolist() == list(range(45_000, 45_005))
    assert np.all(ds.labels == -1)
    scenes = scene_data.load_scenes("test", max_examples=5)
    for i in (0, 4):  # the padded last batch too
        scene = jax.tree.map(lambda x, i=i: x[i], scenes)
        want = np.round(np.asarray(render_jit(scene, 16, 1)) * 255).astype(np.uint8)
        np.testing.assert_array_equal(ds.images[i], want)
    # Scenes differ from the empty floor, and from each other.
    blank = np.round(np.asarray(render_jit(sd.empty_scene(20), 16, 1)) * 255)
    assert all(np.abs(img.astype(float) - blank).max() > 20 for img in ds.images)
    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1
    again = scene_data.load("test", image_size=16, max_examples=5, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.indices, ds.indices)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="image_size"):
        scene_data.load("test", image_size=0, max_examples=1)
    with pytest.raises(ValueError, match="max_primitives"):
        scene_data.random_scene(jax.random.key(0), max_objects=3, max_primitives=4)
