"""The Scenes environment: LibMyPaint's contract, the paper's action space, its operations."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.scene_render import render_jit
from spiral_jax.envs.scenes import ADD, FIRST, LAST, MID, MODIFY, SKIP, Scenes, play

WIDTH = 16


@functools.cache
def small_env() -> Scenes:
    """One small environment for every test (each new one compiles reset and step)."""
    return Scenes(episode_length=5, canvas_width=WIDTH, max_objects=2)


@functools.cache
def _jit(env: Scenes):
    return jax.jit(env.reset), jax.jit(env.step)


def act(env: Scenes, operation: int, **parts) -> dict[str, jax.Array]:
    a = {k: 0 for k in env.action_spec()} | {"operation": operation} | parts
    return {k: jnp.asarray(v, jnp.int32) for k, v in a.items()}


def expected_canvas(env: Scenes, scene: sd.Scene) -> np.ndarray:
    return np.round(np.asarray(render_jit(scene, env.canvas_width, 1)) * 255) / 255


def test_paper_action_space_and_defaults():
    env = Scenes()
    spec = env.action_spec()
    assert list(spec) == ["operation", "shape", "position", "size", "red", "green", "blue"]
    assert dict(spec) == dict(operation=3, shape=4, position=256, size=3, red=4, green=4, blue=4)
    assert math.prod(spec.values()) == 4 * 16**2 * 3 * 4**3 * 3 == 589_824
    assert env.episode_length - 1 == 20 and env.max_objects == 20  # 20 actions, 20 objects
    assert env.observation_shape == (64, 64, 3)


def test_reset_is_the_empty_floor_with_the_skip_mask():
    env = small_env()
    reset, _ = _jit(env)
    state, ts = reset(jax.random.key(0))
    assert int(ts.step_type) == FIRST and float(ts.discount) == 1.0 and float(ts.reward) == 0.0
    assert int(state.num_objects) == 0 and not bool(state.scene.active.any())
    np.testing.assert_allclose(ts.observation["canvas"],
                               expected_canvas(env, sd.empty_scene(2)), atol=1e-7)
    mask = {k: float(v) for k, v in ts.observation["action_mask"].items()}
    assert mask == {k: float(k == "operation") for k in env.action_spec()}


def test_add_skip_modify_and_their_masks():
    env = small_env()
    reset, step = _jit(env)
    state, _ = reset(jax.random.key(0))
    state, ts = step(state, act(env, ADD, shape=sd.CYLINDER, position=100, size=2,
                                red=3, green=1, blue=0))
    want = sd.make_scene([dict(shape=sd.CYLINDER, position=100, size=2, color=(3, 1, 0))], 2)
    for a, b in zip(jax.tree.leaves(state.scene), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.num_objects) == 1 and int(ts.step_type) == MID
    assert all(float(v) == 1.0 for v in ts.observation["action_mask"].values())
    np.testing.assert_allclose(ts.observation["canvas"], expected_canvas(env, want), atol=1e-7)

    skipped, ts = step(state, act(env, SKIP, shape=sd.BOX, position=7))
    for a, b in zip(jax.tree.leaves(skipped.scene), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert {k: float(v) for k, v in ts.observation["action_mask"].items()} == {
        k: float(k == "operation") for k in env.action_spec()}

    state, _ = step(state, act(env, ADD, shape=sd.SPHERE, position=5))
    state, ts = step(state, act(env, MODIFY, shape=sd.BOX, position=200, size=1, blue=3))
    want = sd.make_scene([dict(shape=sd.CYLINDER, position=100, size=2, color=(3, 1, 0)),
                          dict(shape=sd.BOX, position=200, size=1, color=(0, 0, 3))], 2)
    for a, b in zip(jax.tree.leaves(state.scene), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.num_objects) == 2
    np.testing.assert_allclose(ts.observation["canvas"], expected_canvas(env, want), atol=1e-7)


def test_episode_end_restart_and_ignored_operations():
    """Modify before any add and add when full change nothing; LAST after 4 steps."""
    env = small_env()
    reset, step = _jit(env)
    state, ts = reset(jax.random.key(1))
    types = [int(ts.step_type)]
    for i, op in enumerate((MODIFY, ADD, ADD, ADD)):
        state, ts = step(state, act(env, op, position=10 * i + 1))
        types.append(int(ts.step_type))
        assert float(ts.discount) == (0.0 if i == 3 else 1.0)
        if i == 0:
            assert int(state.num_objects) == 0 and not bool(state.scene.active.any())
    assert types == [FIRST, MID, MID, MID, LAST]
    assert int(state.num_objects) == 2 and state.scene.position.tolist() == [11, 21]
    state, ts = step(state, act(env, ADD, position=77))  # ignored: a new episode starts
    assert int(ts.step_type) == FIRST and int(state.episode_step) == 0
    assert int(state.num_objects) == 0 and not bool(state.scene.active.any())
    np.testing.assert_allclose(ts.observation["canvas"],
                               expected_canvas(env, sd.empty_scene(2)), atol=1e-7)
    assert float(ts.observation["action_mask"]["position"]) == 0.0


def test_play_under_vmap_matches_stepping_one_by_one():
    env = small_env()
    t, k = env.episode_length - 1, 2
    rng = np.random.default_rng(0)
    actions = {n: rng.integers(0, c, (t, k)).astype(np.int32) for n, c in env.action_spec().items()}
    keys = jax.random.split(jax.random.key(0), k)
    scenes, canvases = jax.jit(jax.vmap(functools.partial(play, env), in_axes=(0, 1)))(
        keys, {n: jnp.asarray(v) for n, v in actions.items()})
    assert canvases.shape == (k, t + 1, WIDTH, WIDTH, 3)
    reset, step = _jit(env)
    for j in range(k):
        state, ts = reset(keys[j])
        for i in range(t):
            state, ts = step(state, {n: jnp.asarray(v[i, j]) for n, v in actions.items()})
            np.testing.assert_allclose(canvases[j, i + 1], ts.observation["canvas"], atol=1e-7)
        np.testing.assert_array_equal(scenes.position[j], state.scene.position)
        np.testing.assert_array_equal(scenes.active[j], state.scene.active)


def test_out_of_range_actions_clip_under_jit_and_raise_eagerly():
    env = small_env()
    reset, step = _jit(env)
    state, _ = reset(jax.random.key(0))
    state, _ = step(state, act(env, ADD, shape=9, position=-1, size=5, red=4))
    assert int(state.scene.shape[0]) == 3 and int(state.scene.position[0]) == 0
    assert int(state.scene.size[0]) == 2 and int(state.scene.color[0, 0]) == 3
    with pytest.raises(ValueError, match="out of range"):
        env.validate_action(act(env, ADD, position=256))
    with pytest.raises(ValueError, match="missing"):
        env.validate_action({"operation": 0})
    with pytest.raises(ValueError, match="unknown"):
        env.validate_action(act(env, ADD) | {"flag": jnp.asarray(1)})
    with pytest.raises(ValueError, match="integer"):
        env.validate_action(act(env, ADD) | {"size": np.float32(1.0)})
    env.validate_action(act(env, MODIFY, position=255, size=2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(episode_length=1), "at least 2"),
        (dict(episode_length=2.5), "episode_length"),
        (dict(canvas_width=0), "canvas_width"),
        (dict(max_objects=0), "max_objects"),
        (dict(max_objects=True), "max_objects"),
        (dict(samples=0), "samples"),
    ],
)
def test_impossible_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scenes(**kwargs)
