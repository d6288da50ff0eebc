"""The 3D scene description shared by the JAX renderer and the MuJoCo reference.

SPIRAL's synthetic-scene experiment (Ganin et al. 2018, §4.1 and §4.6) places primitives
on a floor, one per step, choosing an object type (4), a position on a 16x16 grid, a
size (3 values) and a colour (3 channels x 4 levels). The paper does not say which four
types, which sizes, or where the camera and the light are; this module fixes them, once,
so that `spiral_jax.envs.scene_render` (pure-JAX ray casting) and
`spiral_jax.envs.scene_mjcf` (MuJoCo XML) draw the same scene. docs/scenes.md explains
the choices.

A :class:`Scene` holds up to `max_objects` objects as *indices into the action grid*,
not as floats: the environment's actions, the dataset's scenes and the MuJoCo file are
then exactly the same scene, and a scene is a small int pytree. `object_geometry` turns
the indices into metres and colours (with numpy in float64 for references, or jax).

Fixed choices (metres; +z up; the camera looks along +y, so grid row 0 is at the back):

* Types: 0 sphere, 1 box (a cube, axis-aligned), 2 cylinder (upright), 3 capsule
  (upright). These four are MuJoCo's own analytic geoms and have closed-form ray
  intersections, so neither renderer approximates the other's shape (a cone is not a
  MuJoCo geom). Every object rests on the floor (z = 0) and is not rotated.
* Size index k picks s = SIZE_VALUES[k] = 0.25, 0.375 or 0.5 (1, 1.5 or 2 grid cells):
  a sphere of radius s, a cube of half-side s, a cylinder of radius s and half-height
  s, a capsule of radius 0.6 s whose axis segment has half-length 0.6 s (height 2.4 s,
  so it reads as a pill, not a sphere).
* Position: a 16x16 grid of cell centres spaced 0.25 over the square [-2, 2]^2;
  flat index `gy * 16 + gx`, x = (gx + 0.5) * 0.25 - 2, y = 2 - (gy + 0.5) * 0.25.
* Colour: each of r, g, b at COLOR_LEVELS = 0.1, 0.4, 0.7 or 1.0 (no pure black, so a
  dark object still shows its shading); 4^3 = 64 colours.
* Camera `main`: a pinhole at (0, -4.6, 5) looking at (0, -0.1, 0), +z up, vertical
  field of view 45 degrees, square image. It looks down 48 degrees, so its highest ray
  still points 25.5 degrees down and every pixel sees the floor within 11 m (no
  horizon, no sky: the background colour never shows). The whole grid is in view.
* One directional light travelling along LIGHT_DIR = (0.5, 0.2, -1) (normalised), so
  shadows fall to the right and a little away from the camera. Colour = albedo x
  (AMBIENT + DIFFUSE x max(0, n . l) x lit) with AMBIENT 0.3 and DIFFUSE 0.7, lit 0 in
  a hard shadow (a ray toward the light hits an object). No specular, no reflection,
  no fog, no attenuation; 0.3 + 0.7 = 1 keeps every colour within [0, 1] unclamped.
* Floor: the plane z = 0, albedo 0.7 grey (MuJoCo: a 40 m x 40 m plane, which covers
  everything the camera sees). Background (never visible with this camera): black.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SHAPES = ("sphere", "box", "cylinder", "capsule")
SPHERE, BOX, CYLINDER, CAPSULE = range(4)
GRID_WIDTH = 16
CELL = 0.25
"""Spacing of the position grid in metres; the grid spans [-2, 2]^2."""
SIZE_VALUES = (0.25, 0.375, 0.5)
COLOR_LEVELS = (0.1, 0.4, 0.7, 1.0)
CAPSULE_RADIUS = 0.6
"""A capsule's radius and axis half-length, as fractions of its size s."""
MAX_OBJECTS = 20

CAMERA_POS = (0.0, -4.6, 5.0)
CAMERA_LOOK_AT = (0.0, -0.1, 0.0)
CAMERA_FOVY = 45.0
"""Vertical field of view of camera `main`, in degrees."""
LIGHT_DIR = (0.5, 0.2, -1.0)
"""Direction the light travels in (unnormalised); the light comes from -LIGHT_DIR."""
AMBIENT = 0.3
DIFFUSE = 0.7
FLOOR_RGB = (0.7, 0.7, 0.7)
BACKGROUND_RGB = (0.0, 0.0, 0.0)
FLOOR_HALF_SIZE = 20.0
"""Half-side of MuJoCo's floor plane (the JAX floor is infinite; the camera sees < 11 m)."""


@struct.dataclass
class Scene:
    """Up to N objects as action-grid indices; inactive slots are ignored.

    shape: int32 [N] in SHAPES order; position: int32 [N] flat grid cell gy * 16 + gx;
    size: int32 [N] index into SIZE_VALUES; color: int32 [N, 3] indices into
    COLOR_LEVELS (r, g, b); active: bool [N]. Leading batch axes are allowed (vmap).
    """

    shape: jax.Array
    position: jax.Array
    size: jax.Array
    color: jax.Array
    active: jax.Array

    @property
    def max_objects(self) -> int:
        return int(self.active.shape[-1])


def empty_scene(max_objects: int = MAX_OBJECTS) -> Scene:
    """A scene with `max_objects` inactive slots (the floor alone)."""
    if isinstance(max_objects, bool) or not isinstance(max_objects, (int, np.integer)):
        raise ValueError(f"max_objects must be a positive integer, got {max_objects!r}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be a positive integer, got {max_objects!r}")
    n = int(max_objects)
    return Scene(
        shape=jnp.zeros((n,), jnp.int32),
        position=jnp.zeros((n,), jnp.int32),
        size=jnp.zeros((n,), jnp.int32),
        color=jnp.zeros((n, 3), jnp.int32),
        active=jnp.zeros((n,), bool),
    )


def make_scene(objects: list[dict[str, Any]], max_objects: int = MAX_OBJECTS) -> Scene:
    """A scene from a list of dicts with keys shape, position (or gx, gy), size, color.

    For tests and examples; raises ValueError on out-of-range indices.
    """
    if len(objects) > max_objects:
        raise ValueError(f"{len(objects)} objects do not fit in max_objects={max_objects}")
    n = max_objects
    arrays = {
        "shape": np.zeros(n, np.int32),
        "position": np.zeros(n, np.int32),
        "size": np.zeros(n, np.int32),
        "color": np.zeros((n, 3), np.int32),
        "active": np.zeros(n, bool),
    }
    for i, obj in enumerate(objects):
        pos = obj["position"] if "position" in obj else obj["gy"] * GRID_WIDTH + obj["gx"]
        color = np.asarray(obj.get("color", (3, 3, 3)))
        for name, value, hi in (
            ("shape", obj["shape"], len(SHAPES)),
            ("position", pos, GRID_WIDTH**2),
            ("size", obj.get("size", 1), len(SIZE_VALUES)),
        ):
            if not 0 <= int(value) < hi:
                raise ValueError(f"object {i}: {name}={value} is out of range [0, {hi - 1}]")
            arrays[name][i] = int(value)
        if color.shape != (3,) or np.any(color < 0) or np.any(color >= len(COLOR_LEVELS)):
            raise ValueError(f"object {i}: color={color.tolist()} must be 3 levels in [0, 3]")
        arrays["color"][i] = color
        arrays["active"][i] = True
    return Scene(**{k: jnp.asarray(v) for k, v in arrays.items()})


def grid_xy(position: Any, xp: Any = jnp) -> Any:
    """Flat grid cell(s) -> floor coordinates (..., 2) in metres (x right, y away)."""
    gy = position // GRID_WIDTH
    gx = position % GRID_WIDTH
    half = GRID_WIDTH * CELL / 2
    x = (gx + 0.5) * CELL - half
    y = half - (gy + 0.5) * CELL
    return xp.stack([x, y], axis=-1)


def object_geometry(scene: Scene, xp: Any = jnp, dtype: Any = None) -> dict[str, Any]:
    """Metric geometry of each slot: the one definition both renderers draw.

    Returns a dict of arrays (leading axes as the scene's):
      center [..., N, 3]: the object's centre (it rests on z = 0);
      radius [..., N]: sphere, cylinder and capsule radius, the cube's half-side;
      half_height [..., N]: the cube's and cylinder's half-height, the capsule's axis
        half-length (the straight part), 0 for a sphere (a capsule with no axis);
      rgb [..., N, 3]: albedo; shape [..., N] and active [..., N] as in the scene.
    `xp` is jax.numpy (default, float32) or numpy (float64 for reference renderers).
    """
    dtype = dtype or (np.float64 if xp is np else jnp.float32)
    shape = xp.asarray(scene.shape)
    s = xp.asarray(SIZE_VALUES, dtype)[xp.asarray(scene.size)]
    is_capsule = shape == CAPSULE
    radius = xp.where(is_capsule, CAPSULE_RADIUS * s, s)
    half_height = xp.where(
        shape == SPHERE, xp.zeros_like(s), xp.where(is_capsule, CAPSULE_RADIUS * s, s)
    )
    top = xp.where(is_capsule, radius + half_height, s)  # half the object's height
    xy = grid_xy(xp.asarray(scene.position), xp).astype(dtype)
    center = xp.concatenate([xy, top[..., None]], axis=-1)
    rgb = xp.asarray(COLOR_LEVELS, dtype)[xp.asarray(scene.color)]
    return {
        "center": center,
        "radius": radius,
        "half_height": half_height,
        "rgb": rgb,
        "shape": shape,
        "active": xp.asarray(scene.active),
    }


def camera_frame() -> dict[str, np.ndarray]:
    """Camera `main` in float64: position, unit forward, right and up (right-handed)."""
    pos = np.asarray(CAMERA_POS, np.float64)
    forward = np.asarray(CAMERA_LOOK_AT, np.float64) - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return {"position": pos, "forward": forward, "right": right, "up": up}


def light_direction() -> np.ndarray:
    """Unit direction the light travels in (float64)."""
    d = np.asarray(LIGHT_DIR, np.float64)
    return d / np.linalg.norm(d)


def camera_rays(width: int, samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins and unit directions [width * samples, width * samples, 3], float64.

    Rays go through sub-pixel centres, row 0 at the top of the image, as OpenGL samples
    a pixel at its centre; `samples` > 1 gives a samples x samples grid per pixel.
    """
    cam = camera_frame()
    n = width * samples
    c = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # -1 .. 1 across the image
    half = np.tan(np.deg2rad(CAMERA_FOVY) / 2)
    u = c[None, :] * half  # column -> right
    v = -c[:, None] * half  # row -> up (row 0 at the top)
    d = cam["forward"] + u[..., None] * cam["right"] + v[..., None] * cam["up"]
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(cam["position"], d.shape)
    return o, d
