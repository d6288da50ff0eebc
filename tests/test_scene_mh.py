"""The Metropolis-Hastings scene baseline (spiral_jax.scene_mh): its moves; slow (they
compile a chain): a flat likelihood samples the prior it claims, a cold chain only
improves."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import scene_mh
from spiral_jax.envs import scene_description as sd

WIDTH = 8


def _scene(active: list[bool]) -> sd.Scene:
    objects = [dict(shape=1, position=17 * i, size=1, color=(1, 2, 3)) for i in range(4)]
    scene = sd.make_scene(objects, max_objects=4)
    return scene.replace(active=jnp.asarray(active))


def test_a_move_redraws_one_block_of_one_object_births_or_kills():
    scene = _scene([True, False, True, True])
    keys = jax.random.split(jax.random.key(0), 4000)
    proposed, log_factor = jax.jit(jax.vmap(scene_mh.propose, in_axes=(0, None)))(keys, scene)
    p = jax.tree.map(np.asarray, proposed)
    old = jax.tree.map(np.asarray, scene)
    log_factor = np.asarray(log_factor)
    # [moves, slots, kinds]: which attribute kinds of which slot changed.
    kinds = ("shape", "position", "size", "color", "active")
    changed = np.stack([(getattr(p, k) != getattr(old, k)).reshape(len(keys), 4, -1).any(-1)
                        for k in kinds], axis=-1)
    assert np.all(changed.any(-1).sum(-1) <= 1)  # one object at most
    birth = p.active[:, 1]  # slot 1, the empty one, came to life
    death = p.active.sum(-1) == 2
    other = ~birth & ~death
    np.testing.assert_allclose(log_factor[birth], -math.log(5), rtol=1e-6)
    np.testing.assert_allclose(log_factor[death], math.log(5), rtol=1e-6)
    assert np.all(log_factor[other] == 0.0)
    # Redraws of an existing object change one attribute kind at most.
    assert np.all(changed[other].any(1).sum(-1) <= 1)
    n = len(keys)
    # A slot is picked uniformly (1 of 4 empty: births 1/4), then a block (1/5 each),
    # and a redraw equals the old value with the prior's chance of it.
    assert abs(birth.mean() - 0.25) < 0.03
    assert abs(death.mean() - 0.75 / 5) < 0.03
    for i, (name, stay) in enumerate((("shape", 1 / 4), ("position", 1 / 256),
                                      ("size", 1 / 3), ("color", 1 / 64))):
        frequency = changed[other][:, :, i].any(-1).sum() / n
        assert abs(frequency - 0.75 / 5 * (1 - stay)) < 0.03, name


@functools.cache
def _compiled():
    """64 chains of 150 moves toward one red cube; the variance is an argument, so
    both tests share one compilation."""
    cube = sd.make_scene([dict(shape=1, gx=8, gy=8, size=2, color=(3, 0, 0))], 4)

    @jax.jit
    def setup(scene: sd.Scene) -> tuple[jax.Array, scene_mh.Chain]:
        targets = jnp.broadcast_to(scene_mh.observe(scene, WIDTH), (64, WIDTH, WIDTH, 3))
        return targets, jax.vmap(lambda t: scene_mh.init(t, 4))(targets)

    targets, start = setup(cube)
    fn = jax.jit(functools.partial(scene_mh.run, num_moves=150))
    return fn, start, targets


def _run(variance: float):
    fn, start, targets = _compiled()
    return fn(jax.random.key(1), start, targets, variance=variance), start


@pytest.mark.slow
def test_a_flat_likelihood_samples_the_prior():
    (final, _), _ = _run(1e12)
    active = np.asarray(final.scene.active)
    # Each of 4 slots present with probability 1/2 (64 chains, 150 moves each: mixed,
    # as a slot is born or dies about once in 20 moves); present objects' types uniform.
    assert abs(active.mean() - 0.5) < 0.1
    shapes = np.asarray(final.scene.shape)[active]
    assert np.all(np.bincount(shapes, minlength=4) > 0.1 * len(shapes))


@pytest.mark.slow
def test_a_cold_chain_never_gets_worse_and_approaches_the_target():
    (final, l2), start = _run(1e-6)
    l2 = np.asarray(l2)
    # Never worse, but for float32 rounding of equal sums (a real change of one 8-bit
    # level in one pixel moves this by 2e-5 / 192 pixels = 1e-7).
    assert np.all(np.diff(l2, axis=0) <= 1e-8)
    blank = np.asarray(start.sse) / (WIDTH * WIDTH * 3)
    assert np.all(l2[-1] < blank) and l2[-1].mean() < 0.5 * blank.mean()
    # The recorded error is the chain's own: recomputed from its scene.
    again = jax.jit(jax.vmap(lambda s: scene_mh.observe(s, WIDTH)))(final.scene)
    np.testing.assert_allclose(np.asarray(final.canvas), np.asarray(again), atol=1e-6)
