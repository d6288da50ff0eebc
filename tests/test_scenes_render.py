"""The pure-JAX scene renderer against an independent float64 reference and closed forms.

The reference below does not solve the renderer's ray equations: it sphere-traces the
primitives' exact signed distance functions in float64 numpy (a different algorithm),
takes normals as finite differences of those distances, and marches shadow rays the
same way. Agreement on thousands of rays checks the analytic intersections, the
nearest-hit choice, the normals, the shadows and the shading at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax.envs import scene_description as sd
from spiral_jax.envs import scene_render as sr

# --- float64 reference: sphere tracing of signed distance functions -----------------


def _sdf(geom: dict, k: int, p: np.ndarray) -> np.ndarray:
    """Exact signed distance [R] from points p [R, 3] to object k of float64 geometry."""
    q = p - geom["center"][k]
    r, h = geom["radius"][k], geom["half_height"][k]
    shape = int(geom["shape"][k])
    if shape == sd.BOX:
        d = np.abs(q) - np.array([r, r, h])
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)
    if shape == sd.CYLINDER:
        d = np.stack([np.hypot(q[:, 0], q[:, 1]) - r, np.abs(q[:, 2]) - h], -1)
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)
    # Sphere (h = 0) and capsule: distance to the axis segment, minus the radius.
    axis = np.stack([0 * q[:, 0], 0 * q[:, 0], np.clip(q[:, 2], -h, h)], -1)
    return np.linalg.norm(q - axis, axis=-1) - r


def _march(geom, objects, o, d, with_floor, steps=3000, tol=1e-9, far=40.0):
    """Sphere-traces rays; returns t [R] (inf on a miss), stepping only unfinished rays."""
    t = np.zeros(len(o))
    hit = np.zeros(len(o), bool)
    live = np.arange(len(o))
    for _ in range(steps):
        p = o[live] + t[live, None] * d[live]
        dist = [_sdf(geom, k, p) for k in objects] + ([p[:, 2]] if with_floor else [])
        dist = np.min(np.stack(dist), axis=0) if dist else np.full(len(live), np.inf)
        converged = dist < tol
        hit[live[converged]] = True
        t[live] += np.where(converged, 0.0, dist)
        live = live[~converged & (t[live] < far)]
        if live.size == 0:
            break
    return np.where(hit, t, np.inf)


def reference_trace(scene: sd.Scene, o: np.ndarray, d: np.ndarray) -> dict[str, np.ndarray]:
    """hit_id, t, normal, lit and rgb for rays o, d [R, 3], all in float64."""
    geom = sd.object_geometry(jax.tree.map(np.asarray, scene), xp=np)
    objects = [k for k in range(len(geom["active"])) if geom["active"][k]]
    t = _march(geom, objects, o, d, with_floor=True)
    hit = np.isfinite(t)
    p = o + np.where(hit, t, 0)[:, None] * d
    dists = np.stack([_sdf(geom, k, p) for k in objects] + [p[:, 2]])
    which = np.argmin(np.abs(dists), axis=0)
    hit_id = np.where(hit, np.array([k + 1 for k in objects] + [0])[which], -1)
    normal = np.tile([0.0, 0.0, 1.0], (len(o), 1))
    for i, k in enumerate(objects):
        sel = hit & (which == i)
        if sel.any():
            step = 1e-7 * np.eye(3)
            grad = np.stack([_sdf(geom, k, p[sel] + step[a]) - _sdf(geom, k, p[sel] - step[a])
                             for a in range(3)], -1)
            normal[sel] = grad / np.linalg.norm(grad, axis=-1, keepdims=True)
    to_light = -sd.light_direction()
    shadow_t = _march(geom, objects, p + 1e-4 * normal, np.tile(to_light, (len(o), 1)),
                      with_floor=False)
    lit = hit & ~np.isfinite(shadow_t) & (normal @ to_light > 0)
    albedo = np.where((hit_id > 0)[:, None], geom["rgb"][np.maximum(hit_id - 1, 0)],
                      np.asarray(sd.FLOOR_RGB))
    shade = sd.AMBIENT + sd.DIFFUSE * np.maximum(normal @ to_light, 0) * lit
    rgb = np.where(hit[:, None], albedo * shade[:, None], np.asarray(sd.BACKGROUND_RGB))
    return {"hit_id": hit_id, "t": t, "normal": normal, "lit": lit.astype(float), "rgb": rgb}


# --- scenes and rays -----------------------------------------------------------------

ONE_OF_EACH = sd.make_scene([
    dict(shape=sd.SPHERE, gx=3, gy=11, size=2, color=(3, 0, 0)),
    dict(shape=sd.BOX, gx=8, gy=8, size=1, color=(0, 3, 0)),
    dict(shape=sd.CYLINDER, gx=12, gy=4, size=2, color=(0, 0, 3)),
    dict(shape=sd.CAPSULE, gx=4, gy=3, size=2, color=(3, 3, 0)),
    dict(shape=sd.BOX, gx=10, gy=9, size=2, color=(1, 2, 3)),  # shadows the cube's side
    dict(shape=sd.CAPSULE, gx=13, gy=13, size=0, color=(2, 1, 0)),
])


def crowded_scene(seed: int) -> sd.Scene:
    """20 random objects, cells may repeat (objects interpenetrate)."""
    rng = np.random.default_rng(seed)
    n = sd.MAX_OBJECTS
    return sd.Scene(
        shape=jnp.asarray(rng.integers(0, 4, n), jnp.int32),
        position=jnp.asarray(rng.integers(0, 256, n), jnp.int32),
        size=jnp.asarray(rng.integers(0, 3, n), jnp.int32),
        color=jnp.asarray(rng.integers(0, 4, (n, 3)), jnp.int32),
        active=jnp.asarray(rng.random(n) < 0.8),
    )


def random_rays(seed: int, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays from above the scene in random downward-ish directions (not camera rays)."""
    rng = np.random.default_rng(seed)
    o = np.stack([rng.uniform(-3, 3, num), rng.uniform(-3, 3, num), rng.uniform(1.5, 4, num)], -1)
    target = np.stack([rng.uniform(-2, 2, num), rng.uniform(-2, 2, num),
                       rng.uniform(0, 1.0, num)], -1)
    d = target - o
    return o, d / np.linalg.norm(d, axis=-1, keepdims=True)


_trace = jax.jit(sr.trace)
RAYS = 2048


def trace(scene: sd.Scene, o: np.ndarray, d: np.ndarray) -> dict[str, np.ndarray]:
    """The renderer's trace of up to RAYS rays, padded to RAYS so that it compiles once."""
    n = len(o)
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], RAYS - n, 0)])  # noqa: E731
    return {k: np.asarray(v, np.float64)[:n] for k, v in _trace(scene, pad(o), pad(d)).items()}


def _compare(scene: sd.Scene, o: np.ndarray, d: np.ndarray) -> None:
    ours = trace(scene, o, d)
    ref = reference_trace(scene, o, d)
    same = ours["hit_id"] == ref["hit_id"]
    # float32 against float64 may disagree only for rays within ~1e-6 m of a silhouette.
    assert same.mean() >= 0.999, f"hit ids differ on {np.sum(~same)} of {len(same)} rays"
    assert np.any(ref["hit_id"] > 0) and np.any(ref["hit_id"] == 0)
    np.testing.assert_allclose(ours["t"][same], ref["t"][same], rtol=2e-5, atol=2e-5)
    on_obj = same & (ref["hit_id"] > 0)
    cos = np.sum(ours["normal"][on_obj] * ref["normal"][on_obj], -1)
    # Normals agree except on the edges of boxes and cylinders, where the SDF gradient
    # is a blend of two faces: allow a few.
    assert np.mean(cos > 1 - 1e-4) >= 0.99, np.sort(cos)[:5]
    lit_same = ours["lit"][same] == ref["lit"][same]
    assert lit_same.mean() >= 0.999, f"shadow differs on {np.sum(~lit_same)} rays"
    assert 0.02 < 1 - ref["lit"][same].mean() < 0.9  # the scenes do have shadows
    good = same.copy()
    good[same] = lit_same
    good[on_obj] &= np.sum(ours["normal"][on_obj] * ref["normal"][on_obj], -1) > 1 - 1e-4
    np.testing.assert_allclose(ours["rgb"][good], ref["rgb"][good], atol=1e-4)


def test_camera_rays_match_float64_reference_one_of_each():
    o, d = sd.camera_rays(40)
    _compare(ONE_OF_EACH, o.reshape(-1, 3), d.reshape(-1, 3))


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_random_rays_match_float64_reference_crowded(seed):
    o, d = random_rays(seed, 1500)
    _compare(crowded_scene(seed), o, d)


# --- closed forms ----------------------------------------------------------------------


@functools.cache
def _render(width: int, samples: int = 1):
    return jax.jit(jax.vmap(lambda s: sr.render(s, width, samples)))


def test_empty_scene_is_the_lit_floor_everywhere():
    o, d = sd.camera_rays(32)
    rgb = trace(sd.empty_scene(), o.reshape(-1, 3), d.reshape(-1, 3))["rgb"]
    cos = -sd.light_direction()[2]
    want = np.asarray(sd.FLOOR_RGB) * (sd.AMBIENT + sd.DIFFUSE * cos)
    np.testing.assert_allclose(rgb, np.broadcast_to(want, rgb.shape), atol=1e-6)


def test_vertical_ray_hits_each_shape_on_top_at_its_height():
    """Straight down through each object's axis: t = start height - object height."""
    scene = sd.make_scene([dict(shape=k, gx=2 + 4 * k, gy=8, size=2) for k in range(4)])
    geom = sd.object_geometry(scene, xp=np)
    o = geom["center"][:4].copy()
    o[:, 2] = 3.0
    out = trace(scene, o, np.tile([0.0, 0.0, -1.0], (4, 1)))
    s = sd.SIZE_VALUES[2]
    heights = np.array([2 * s, 2 * s, 2 * s, 2 * (2 * sd.CAPSULE_RADIUS * s)])
    np.testing.assert_allclose(np.asarray(out["t"]), 3.0 - heights, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["hit_id"]), [1, 2, 3, 4])
    np.testing.assert_allclose(np.asarray(out["normal"]), np.tile([0, 0, 1.0], (4, 1)), atol=1e-5)


def test_box_face_shading_and_occlusion_order():
    """A ray along +y meets the nearer cube's -y face; its colour is closed-form."""
    scene = sd.make_scene([
        dict(shape=sd.BOX, gx=8, gy=4, size=1, color=(0, 0, 3)),  # farther (y = 0.875)
        dict(shape=sd.BOX, gx=8, gy=8, size=1, color=(3, 1, 0)),  # nearer (y = -0.125)
    ])
    o = np.array([[0.125, -3.0, 0.2]])
    out = trace(scene, o, np.array([[0.0, 1.0, 0.0]]))
    s = sd.SIZE_VALUES[1]
    assert int(out["hit_id"][0]) == 2
    np.testing.assert_allclose(float(out["t"][0]), 3.0 - 0.125 - s, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["normal"][0]), [0, -1, 0], atol=1e-6)
    cos = max(0.0, float(-sd.light_direction() @ np.array([0, -1, 0])))
    want = np.array([1.0, 0.4, 0.1]) * (sd.AMBIENT + sd.DIFFUSE * cos)
    np.testing.assert_allclose(np.asarray(out["rgb"][0]), want, atol=1e-6)


@pytest.mark.slow  # four compilations
def test_vmap_matches_single_scenes_and_supersampling_averages():
    scenes = jax.tree.map(lambda a, b: jnp.stack([a, b]), ONE_OF_EACH, crowded_scene(3))
    batch = np.asarray(_render(16)(scenes))
    for i, scene in enumerate((ONE_OF_EACH, crowded_scene(3))):
        single = np.asarray(jax.jit(sr.render, static_argnums=1)(scene, 16))
        np.testing.assert_allclose(batch[i], single, atol=1e-6)
    fine = np.asarray(_render(32)(scenes))
    aa = np.asarray(_render(16, 2)(scenes))
    np.testing.assert_allclose(aa, fine.reshape(2, 16, 2, 16, 2, 3).mean((2, 4)), atol=1e-6)
    assert batch.min() >= 0.0 and batch.max() <= 1.0


def test_render_rejects_bad_widths():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="width"):
            sr.render(ONE_OF_EACH, bad)
    with pytest.raises(ValueError, match="samples"):
        sr.render(ONE_OF_EACH, 8, 0)
