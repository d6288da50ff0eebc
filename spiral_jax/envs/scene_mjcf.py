"""The real engine as reference: a `Scene` as MuJoCo XML, rendered offscreen by MuJoCo.

`to_mjcf(scene, width)` writes the scene of `scene_description` as an MJCF model: the
same camera (`main`), the same directional light, the same floor and objects, and
everything that `scene_render` does not model switched off, so that MuJoCo's OpenGL
picture is the JAX ray caster's up to rasterisation:

* lighting: MuJoCo's fixed-function model gives albedo x (ambient + diffuse x
  max(0, n . l)) + specular + emission, summed over its lights. Every material has
  specular 0, shininess 0, emission 0 and reflectance 0. The directional light has
  DIFFUSE and no ambient or specular; the ambient term AMBIENT comes from the headlight
  (diffuse and specular 0), because MuJoCo drops a shadow-casting light's own ambient
  inside its shadow (shadowed floor came out black), where the JAX renderer keeps it.
  What is left is the JAX renderer's Lambert + ambient.
* shadows: the light casts them (MuJoCo's shadow map, 2048^2 over an 8 m square, about
  4 mm a texel; MuJoCo filters its edges over a couple of texels, the JAX renderer's are
  hard).
* fog, haze, reflections and the skybox are off (`render` clears the scene flags), and
  multisampling is off (`offsamples` 0): one sample at each pixel centre, as the JAX
  renderer's one ray a pixel.
* MuJoCo draws spheres, cylinders and capsules as polygon meshes (`numslices` and
  `numstacks` raised to 64 here, so silhouettes are within about 0.1 % of a radius) and
  interpolates their lighting over the polygons; these, shadow-map texels and the
  shadow filter are the differences that remain (docs/scenes.md measures them).

`render(scene, width)` needs the `mujoco` package and an OpenGL it can open offscreen:
set `MUJOCO_GL=osmesa` (Debian's `libosmesa6`) before mujoco is imported; it defaults
to osmesa here when unset. Each call closes its renderer explicitly.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.scene_description import Scene

LIGHT_DISTANCE = 10.0
"""How far back along the light's direction MuJoCo's directional light (its shadow
camera) sits from the origin; only its shadow map uses a position."""
SHADOW_CLIP = 4.0
"""Half-side (m) of the square the directional light's shadow map covers: every shadow
an object on the grid can cast (the grid is [-2, 2]^2, objects are at most 1.2 m tall,
shadows at most 0.65 m long); MuJoCo lights what lies outside, as it should."""
SHADOW_SIZE = 2048
"""Side of MuJoCo's shadow map in texels (4 mm each). As faithful as 4096 texels over a
24 m square, and 2.4 times faster: the shadow map is most of a software render."""
NUM_SLICES = 64
NUM_STACKS = 64
ZNEAR, ZFAR = 0.1, 50.0


def _f(values: Any) -> str:
    return " ".join(f"{float(v):.9g}" for v in np.atleast_1d(values))


def to_mjcf(scene: Scene, width: int = 64) -> str:
    """MuJoCo XML of one (unbatched) scene; camera `main` renders it at width x width.

    Geoms are named `floor` and `obj{i}` for active slot i, so segmentation ids map
    back to scene slots (`segmentation`).
    """
    if np.ndim(scene.active) != 1:
        raise ValueError(f"to_mjcf takes one scene, got active of shape {np.shape(scene.active)}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    geom = sd.object_geometry(scene, xp=np)
    cam = sd.camera_frame()
    light = sd.light_direction()
    a, d = sd.AMBIENT, sd.DIFFUSE
    floor = sd.FLOOR_RGB
    lines = [
        '<mujoco model="spiral_scene">',
        '  <compiler angle="degree"/>',
        # extent 1: znear, zfar and shadowclip below are then in metres.
        '  <statistic extent="1" center="0 0 0"/>',
        "  <visual>",
        f'    <global offwidth="{width}" offheight="{width}" fovy="{sd.CAMERA_FOVY}"/>',
        f'    <quality shadowsize="{SHADOW_SIZE}" offsamples="0" numslices="{NUM_SLICES}"'
        f' numstacks="{NUM_STACKS}" numquads="4"/>',
        # The ambient term comes from the headlight (MuJoCo drops a shadow-casting
        # light's ambient in its shadow, the JAX renderer keeps ambient everywhere).
        f'    <headlight active="1" ambient="{a} {a} {a}" diffuse="0 0 0" specular="0 0 0"/>',
        f'    <map znear="{ZNEAR}" zfar="{ZFAR}" shadowclip="{SHADOW_CLIP}" haze="0"/>',
        "  </visual>",
        "  <asset>",
        f'    <material name="floor" rgba="{_f(floor)} 1" specular="0" shininess="0"'
        ' reflectance="0" emission="0"/>',
    ]
    active = np.asarray(geom["active"])
    for i in np.flatnonzero(active):
        lines.append(
            f'    <material name="m{i}" rgba="{_f(geom["rgb"][i])} 1" specular="0"'
            ' shininess="0" reflectance="0" emission="0"/>'
        )
    lines += [
        "  </asset>",
        "  <worldbody>",
        f'    <light name="sun" directional="true" castshadow="true"'
        f' pos="{_f(-LIGHT_DISTANCE * light)}" dir="{_f(light)}"'
        f' ambient="0 0 0" diffuse="{d} {d} {d}" specular="0 0 0"/>',
        f'    <camera name="main" pos="{_f(cam["position"])}"'
        f' xyaxes="{_f(cam["right"])} {_f(cam["up"])}" fovy="{sd.CAMERA_FOVY}"/>',
        f'    <geom name="floor" type="plane" size="{sd.FLOOR_HALF_SIZE} {sd.FLOOR_HALF_SIZE} 1"'
        ' material="floor"/>',
    ]
    for i in np.flatnonzero(active):
        r, h = geom["radius"][i], geom["half_height"][i]
        kind = sd.SHAPES[int(geom["shape"][i])]
        size = {"sphere": [r], "box": [r, r, h], "cylinder": [r, h], "capsule": [r, h]}[kind]
        lines.append(
            f'    <geom name="obj{i}" type="{kind}" size="{_f(size)}"'
            f' pos="{_f(geom["center"][i])}" material="m{i}"/>'
        )
    lines += ["  </worldbody>", "</mujoco>", ""]
    return "\n".join(lines)


def _import_mujoco() -> Any:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import mujoco  # noqa: PLC0415  (optional dependency, and MUJOCO_GL must be set first)

    return mujoco


def segmentation_ids(model: Any, seg: np.ndarray) -> np.ndarray:
    """MuJoCo's segmentation [H, W, 2] (object id, type) -> ids as `scene_render.trace`.

    -1 background, 0 floor, 1 + i for the geom `obj{i}` (scene slot i).
    """
    mujoco = _import_mujoco()
    lut = np.full(model.ngeom + 1, -1, np.int32)  # index ngeom: anything not a geom
    for g in range(model.ngeom):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g)
        lut[g] = 0 if name == "floor" else 1 + int(name[3:])
    obj_id, obj_type = seg[..., 0], seg[..., 1]
    is_geom = (obj_type == int(mujoco.mjtObj.mjOBJ_GEOM)) & (obj_id >= 0)
    return np.where(is_geom, lut[np.clip(obj_id, 0, model.ngeom)], -1).astype(np.int32)


def render(scene: Scene, width: int = 64, what: tuple[str, ...] = ("rgb",)) -> dict[str, Any]:
    """Renders one scene with MuJoCo offscreen; closes the renderer before returning.

    `what` picks from "rgb" (float32 [W, W, 3] in [0, 1], from MuJoCo's 8 bits),
    "ids" (int32 [W, W], `segmentation_ids`) and "depth" (float32 [W, W], distance
    along the camera axis in metres). Raises whatever mujoco raises when it cannot
    open an OpenGL context (callers that may lack one catch it).
    """
    mujoco = _import_mujoco()
    model = mujoco.MjModel.from_xml_string(to_mjcf(scene, width))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    out: dict[str, Any] = {}
    renderer = mujoco.Renderer(model, width, width)
    try:
        flags = renderer.scene.flags
        for flag in ("mjRND_FOG", "mjRND_HAZE", "mjRND_REFLECTION", "mjRND_SKYBOX"):
            flags[getattr(mujoco.mjtRndFlag, flag)] = 0
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 1
        if "rgb" in what:
            renderer.update_scene(data, camera="main")
            out["rgb"] = renderer.render().astype(np.float32) / 255.0
        if "ids" in what:
            renderer.enable_segmentation_rendering()
            renderer.update_scene(data, camera="main")
            out["ids"] = segmentation_ids(model, renderer.render())
            renderer.disable_segmentation_rendering()
        if "depth" in what:
            renderer.enable_depth_rendering()
            renderer.update_scene(data, camera="main")
            out["depth"] = renderer.render().astype(np.float32)
            renderer.disable_depth_rendering()
    finally:
        renderer.close()
    return out


FOREGROUND_TOL = 0.02
"""A pixel is foreground when it differs from the empty scene's by more than this in
some channel (MuJoCo's 8-bit floor varies by 1/255; a shadow darkens it by 0.4)."""


def agreement(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray],
    our_blank: np.ndarray, their_blank: np.ndarray,
) -> dict[str, float]:
    """How far two renderings of one scene agree, each against its own empty scene.

    `ours` and `theirs` hold "rgb" [W, W, 3] in [0, 1] and, where both have them,
    "ids" [W, W] (`segmentation_ids`) and "depth" [W, W].

    Returns mae (mean absolute pixel error), fg_iou (intersection over union of the
    foregrounds: pixels that differ from the renderer's own empty scene by more than
    FOREGROUND_TOL, so shadows count), and with ids: id_agree (fraction of pixels that
    see the same object, floor or background) and object_iou (IoU of the pixels that
    see any object); with depth: depth_mae over pixels that agree on a hit id >= 0.
    """
    out = {"mae": float(np.abs(ours["rgb"] - theirs["rgb"]).mean())}
    fg_ours = np.abs(ours["rgb"] - our_blank).max(-1) > FOREGROUND_TOL
    fg_theirs = np.abs(theirs["rgb"] - their_blank).max(-1) > FOREGROUND_TOL
    out["fg_iou"] = _iou(fg_ours, fg_theirs)
    if "ids" in ours and "ids" in theirs:
        out["id_agree"] = float((ours["ids"] == theirs["ids"]).mean())
        out["object_iou"] = _iou(ours["ids"] > 0, theirs["ids"] > 0)
        if "depth" in ours and "depth" in theirs:
            same = (ours["ids"] == theirs["ids"]) & (ours["ids"] >= 0)
            diff = np.abs(ours["depth"] - theirs["depth"])[same]
            out["depth_mae"] = float(diff.mean()) if diff.size else 0.0
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
