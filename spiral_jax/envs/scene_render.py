"""A pure-JAX renderer of `scene_description.Scene`: analytic ray casting, one ray a pixel.

Why ray casting and not a rasteriser: every primitive (sphere, cube, cylinder, capsule)
and the floor have closed-form ray intersections, so a pixel costs one [objects]-wide
vector of intersections, the image is a dense array computation with static shapes
(jit, vmap), and the result is exact geometry, which MuJoCo's tessellated OpenGL
rendering (`scene_mjcf`) then only approximates, not the other way round.

Per pixel (through its centre, as OpenGL samples; `samples` > 1 averages a grid of
sub-pixel rays):

1. the primary ray is intersected with every active object and the floor z = 0; the
   nearest hit wins (depth-correct occlusion);
2. its normal n comes from the hit point and the object's shape;
3. a shadow ray from the hit point (offset by 1e-3 along n) toward the light is
   intersected with every object; any hit puts the point in hard shadow;
4. colour = albedo x (AMBIENT + DIFFUSE x max(0, n . l) x lit), where l points toward
   the light; a ray that misses everything gets BACKGROUND_RGB.

Intersections (ray o + t d, |d| = 1, hits need t > EPS):
* capsule: the side of the infinite cylinder |(p - c)_xy| = r with |p_z - c_z| <= h,
  and the spheres of radius r at c +- h z; a sphere is the capsule with h = 0;
* box: the slab test over the three axes;
* cylinder: the side as above, and the two caps z = c_z +- h inside radius r.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.scene_description import Scene

EPS = 1e-4
"""Smallest ray parameter counted as a hit (metres)."""
SHADOW_OFFSET = 1e-3
"""Shadow rays start this far off the surface, along its normal, to avoid self-hits."""
_INF = jnp.inf


def _safe_inverse(d: jax.Array) -> jax.Array:
    """1 / d with |d| raised to 1e-9 (a ray parallel to a slab then never enters it)."""
    return 1.0 / jnp.where(jnp.abs(d) < 1e-9, jnp.where(d < 0, -1e-9, 1e-9), d)


def _first_hit(q: tuple, d: tuple, r: jax.Array, h: jax.Array, shape: jax.Array) -> jax.Array:
    """Ray parameter of the first hit t > EPS (inf if none) for every (object, ray) pair.

    q: (x, y, z) components of the ray origins in the objects' frames, each [N, R];
    d: (x, y, z) of the unit directions, each [R] or scalar; r, h, shape: [N, 1].
    Components come separately (not as [..., 3]) so that every operation runs along the
    contiguous ray axis, which XLA vectorises. Each object is one upright convex prism
    cut by the slab |z| <= h: a disc of radius r (cylinder; capsule and sphere cores)
    or a square of half-side r (box) in xy. A capsule adds the spheres of radius r at
    z = +-h (a sphere is a capsule with h = 0); its prism's flat ends lie inside those
    spheres, so the union's first hit is the smallest of the parts'.
    """
    qx, qy, qz = q
    dx, dy, dz = d
    inv = [_safe_inverse(c) for c in d]
    # xy-disc: a t^2 + 2 b t + c = 0 (a is the ray's, b and c the pair's).
    a = dx * dx + dy * dy
    b = qx * dx + qy * dy
    rho2 = qx * qx + qy * qy
    c = rho2 - r * r
    disc = b * b - a * c
    vertical = a < 1e-12
    root = jnp.sqrt(jnp.maximum(disc, 0.0))
    inv_a = 1.0 / jnp.maximum(a, 1e-12)
    inside = c <= 0.0
    disc_lo = jnp.where(vertical, jnp.where(inside, -_INF, _INF), (-b - root) * inv_a)
    disc_hi = jnp.where(vertical, jnp.where(inside, _INF, -_INF), (-b + root) * inv_a)
    missed = ~vertical & (disc < 0.0)
    disc_lo = jnp.where(missed, _INF, disc_lo)
    disc_hi = jnp.where(missed, -_INF, disc_hi)
    # xy-square: the slab test on x and y.
    x0, x1 = (-r - qx) * inv[0], (r - qx) * inv[0]
    y0, y1 = (-r - qy) * inv[1], (r - qy) * inv[1]
    square_lo = jnp.maximum(jnp.minimum(x0, x1), jnp.minimum(y0, y1))
    square_hi = jnp.minimum(jnp.maximum(x0, x1), jnp.maximum(y0, y1))
    is_box = shape == sd.BOX
    lo = jnp.where(is_box, square_lo, disc_lo)
    hi = jnp.where(is_box, square_hi, disc_hi)
    # The slab |z| <= h.
    z0, z1 = (-h - qz) * inv[2], (h - qz) * inv[2]
    lo = jnp.maximum(lo, jnp.minimum(z0, z1))
    hi = jnp.minimum(hi, jnp.maximum(z0, z1))
    t = jnp.where((hi >= lo) & (hi > EPS), jnp.where(lo > EPS, lo, hi), _INF)
    # Capsule (and sphere) ends: |q - s h z + t d|^2 = r^2 with |d| = 1.
    rounded = (shape == sd.CAPSULE) | (shape == sd.SPHERE)
    for sign in (1.0, -1.0):
        qz_end = qz - sign * h
        b_end = b + qz_end * dz
        disc_end = b_end * b_end - (c + qz_end * qz_end)
        root_end = jnp.sqrt(jnp.maximum(disc_end, 0.0))
        t0, t1 = -b_end - root_end, -b_end + root_end
        t_end = jnp.where(t0 > EPS, t0, jnp.where(t1 > EPS, t1, _INF))
        t = jnp.where(rounded & (disc_end >= 0.0), jnp.minimum(t, t_end), t)
    return t


def intersect_objects(geometry: dict, origins: jax.Array, dirs: jax.Array) -> jax.Array:
    """Ray parameter of the first hit of each ray with each object: [N, R] (inf: miss).

    `geometry` is `scene_description.object_geometry(scene)` of one scene; origins are
    [R, 3], unit dirs [R, 3] or one shared [3]. Inactive objects are never hit.
    """
    center = geometry["center"]
    q = tuple(origins[None, :, i] - center[:, i, None] for i in range(3))
    d = tuple(dirs[..., i] for i in range(3))
    col = lambda x: x[:, None]  # noqa: E731  per-object values against [N, R]
    t = _first_hit(q, d, col(geometry["radius"]), col(geometry["half_height"]),
                   col(geometry["shape"]))
    return jnp.where(col(geometry["active"]), t, _INF)


def nearest_object(geometry: dict, origins: jax.Array, dirs: jax.Array):
    """The nearest object hit by each ray: t [R] (inf: none) and slot [R] (0 if none).

    The [N, R] table is reduced by a chain of N elementwise minima, which XLA fuses into
    one loop; a reduction over the object axis (jnp.min, argmin) ran several times
    slower on CPU. Ties go to the lower slot.
    """
    t_all = intersect_objects(geometry, origins, dirs)
    best_t, best_slot = t_all[0], jnp.zeros(t_all.shape[1:], jnp.int32)
    for i in range(1, t_all.shape[0]):
        closer = t_all[i] < best_t
        best_t = jnp.where(closer, t_all[i], best_t)
        best_slot = jnp.where(closer, i, best_slot)
    return best_t, best_slot


def any_object(geometry: dict, origins: jax.Array, dirs: jax.Array) -> jax.Array:
    """Whether each ray [R] hits any object (the shadow test), reduced as above."""
    t_all = intersect_objects(geometry, origins, dirs)
    hit = jnp.isfinite(t_all[0])
    for i in range(1, t_all.shape[0]):
        hit = hit | jnp.isfinite(t_all[i])
    return hit


def _object_normals(geometry: dict, slot: jax.Array, points: tuple) -> tuple:
    """Outward unit normals (x, y, z components, each [R]) at points on objects `slot`."""
    center = geometry["center"][slot]
    qx, qy, qz = (points[i] - center[:, i] for i in range(3))
    r = geometry["radius"][slot]
    h = geometry["half_height"][slot]
    shape = geometry["shape"][slot]
    zero = jnp.zeros_like(qx)
    # Capsule and sphere: away from the nearest point of the axis segment.
    round_n = (qx, qy, qz - jnp.clip(qz, -h, h))
    # Box: the face whose slab the point is outermost in.
    safe_h = jnp.maximum(h, 1e-9)  # a sphere has h = 0; its box and cylinder branches are unused
    ax, ay, az = jnp.abs(qx) / r, jnp.abs(qy) / r, jnp.abs(qz) / safe_h
    x_face = (ax >= ay) & (ax >= az)
    y_face = ~x_face & (ay >= az)
    z_face = ~x_face & ~y_face
    box_n = tuple(jnp.where(f, jnp.sign(c), 0.0) for f, c in ((x_face, qx), (y_face, qy),
                                                              (z_face, qz)))
    # Cylinder: a cap where |z| / h beats the radial ratio, else the side.
    cap = az >= jnp.sqrt(qx * qx + qy * qy) / r
    cyl_n = (jnp.where(cap, 0.0, qx), jnp.where(cap, 0.0, qy), jnp.where(cap, jnp.sign(qz), zero))
    n = tuple(
        jnp.where(shape == sd.BOX, b, jnp.where(shape == sd.CYLINDER, c, o))
        for b, c, o in zip(box_n, cyl_n, round_n, strict=True)
    )
    norm = jnp.maximum(jnp.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]), 1e-12)
    return tuple(c / norm for c in n)


def trace(scene: Scene, origins: jax.Array, dirs: jax.Array) -> dict[str, jax.Array]:
    """Casts rays [R, 3] into one scene; the renderer's whole computation, exposed.

    Returns t [R] (inf: miss), hit_id [R] (-1 background, 0 floor, 1 + i object slot i,
    the same numbering `scene_mjcf.segmentation_ids` gives MuJoCo's), normal [R, 3],
    lit [R] (1: the point faces the light and nothing blocks it, else 0) and rgb [R, 3].
    """
    geom = sd.object_geometry(scene)
    origins = jnp.asarray(origins, jnp.float32)
    dirs = jnp.asarray(dirs, jnp.float32)
    # Barriers keep XLA from fusing (and so recomputing) the [N, R] intersection tables
    # into each of their many consumers.
    t_near, nearest = jax.lax.optimization_barrier(nearest_object(geom, origins, dirs))
    o = tuple(origins[:, i] for i in range(3))
    d = tuple(dirs[:, i] for i in range(3))
    t_floor = jnp.where(d[2] < 0.0, -o[2] / jnp.minimum(d[2], -1e-12), _INF)
    t_floor = jnp.where(t_floor > EPS, t_floor, _INF)
    on_object = t_near < t_floor
    t = jnp.minimum(t_near, t_floor)
    hit = jnp.isfinite(t)
    hit_id = jnp.where(on_object, nearest + 1, jnp.where(hit, 0, -1)).astype(jnp.int32)

    t_hit = jnp.where(hit, t, 0.0)
    points = tuple(o[i] + t_hit * d[i] for i in range(3))
    object_n = _object_normals(geom, nearest, points)
    floor_n = (0.0, 0.0, 1.0)
    normal = tuple(jnp.where(on_object, object_n[i], floor_n[i]) for i in range(3))

    to_light = -sd.light_direction()
    shadow_origins = jnp.stack([points[i] + SHADOW_OFFSET * normal[i] for i in range(3)], -1)
    shadowed = jax.lax.optimization_barrier(
        any_object(geom, shadow_origins, jnp.asarray(to_light, jnp.float32)))
    cos = sum(float(to_light[i]) * normal[i] for i in range(3))
    # Facing away from the light is shadow too (the diffuse term is 0 there anyway).
    lit = (hit & ~shadowed & (cos > 0.0)).astype(jnp.float32)
    shade = sd.AMBIENT + sd.DIFFUSE * jnp.maximum(cos, 0.0) * lit
    albedo = geom["rgb"][nearest]
    rgb = jnp.stack([
        jnp.where(hit, jnp.where(on_object, albedo[:, i], sd.FLOOR_RGB[i]) * shade,
                  sd.BACKGROUND_RGB[i])
        for i in range(3)
    ], -1)
    return {"t": t, "hit_id": hit_id, "normal": jnp.stack(normal, -1), "lit": lit, "rgb": rgb}


def _check_width(width: int, samples: int) -> None:
    for name, v in (("width", width), ("samples", samples)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def render(scene: Scene, width: int, samples: int = 1) -> jax.Array:
    """The scene seen by camera `main`: float32 [width, width, 3] in [0, 1].

    `width` and `samples` are static (Python ints): jit with static_argnums=(1, 2) or
    close over them; vmap over scenes. `samples` = k averages k x k rays a pixel.
    """
    _check_width(width, samples)
    o, d = sd.camera_rays(width, samples)
    n = width * samples
    out = trace(scene, o.reshape(-1, 3), d.reshape(-1, 3))["rgb"].reshape(n, n, 3)
    if samples > 1:
        out = out.reshape(width, samples, width, samples, 3).mean(axis=(1, 3))
    return jnp.clip(out, 0.0, 1.0)


render_jit = jax.jit(render, static_argnums=(1, 2))
"""`render` jitted (width and samples static), one object shared so that every caller
reuses its compilations (one per scene shape, width and samples)."""


def render_channels(scene: Scene, width: int) -> dict[str, jax.Array]:
    """rgb [W, W, 3] (as `render`, one ray a pixel), hit ids and depth [W, W] at once.

    ids are `trace`'s (-1 background, 0 floor, 1 + i object slot i); depth is what
    OpenGL's depth buffer holds (distance along the view axis, not along the ray), so
    both compare with MuJoCo's segmentation and depth renderings; depth is inf where
    nothing is hit. One trace, so one compilation, serves all three.
    """
    _check_width(width, 1)
    o, d = sd.camera_rays(width)
    out = trace(scene, o.reshape(-1, 3), d.reshape(-1, 3))
    axial = d.reshape(-1, 3) @ sd.camera_frame()["forward"]
    depth = out["t"] * jnp.asarray(axial, jnp.float32)
    return {
        "rgb": jnp.clip(out["rgb"], 0.0, 1.0).reshape(width, width, 3),
        "ids": out["hit_id"].reshape(width, width),
        "depth": depth.reshape(width, width),
    }
