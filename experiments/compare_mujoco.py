r"""How close the JAX scene renderer is to MuJoCo: per-scene and mean figures, a picture.

    python -m experiments.compare_mujoco --num=100 --out=docs/images/scenes_vs_mujoco.png

Renders `--num` held-out scenes of the `scenes` dataset (`spiral_jax.scene_data`,
split `test`, 1 to 5 objects) with the JAX ray caster and with MuJoCo
(`spiral_jax.envs.scene_mjcf`, offscreen through OSMesa), and with `--crowded=K` also K
scenes of 20 objects each (every slot active; cells may repeat). It prints, per scene
and on average, the pixel mean absolute error (JAX's image rounded to 8 bits, as the
environment observes it and MuJoCo outputs it), the foreground IoU (pixels that differ
from each renderer's own empty scene), the fraction of pixels whose object id agrees
(MuJoCo's segmentation rendering), the IoU of object pixels and the depth error, and
names the worst scenes. `--out` writes a grid: JAX, MuJoCo, 4 x |difference|, one row
a scene (the first dataset scenes, then two crowded ones).
"""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np
from absl import app, flags

from spiral_jax import scene_data
from spiral_jax.envs import scene_description as sd
from spiral_jax.envs import scene_mjcf, scene_render
from spiral_jax.image_grid import save_grid

_NUM = flags.DEFINE_integer("num", 20, "Held-out dataset scenes to compare.")
_CROWDED = flags.DEFINE_integer("crowded", 0, "Also this many random 20-object scenes.")
_WIDTH = flags.DEFINE_integer("width", 64, "Image side in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the crowded scenes.")
_OUT = flags.DEFINE_string("out", None, "Optional PNG: JAX | MuJoCo | 4 x |diff| rows.")
_ROWS = flags.DEFINE_integer("rows", 8, "Scenes shown in the picture.")
_VERBOSE = flags.DEFINE_bool("per_scene", True, "Print one line per scene.")


def crowded_scenes(key: jax.Array, num: int) -> sd.Scene:
    """`num` scenes with all 20 slots active, every part uniform over the action grid."""
    scenes = jax.vmap(lambda k: scene_data.random_scene(k, sd.MAX_OBJECTS, 1))(
        jax.random.split(key, num))
    keys = jax.random.split(jax.random.fold_in(key, 1), 2)
    position = jax.random.randint(keys[0], scenes.active.shape, 0, sd.GRID_WIDTH**2)
    shape = jax.random.randint(keys[1], scenes.active.shape, 0, len(sd.SHAPES))
    full = scenes.replace(position=position, shape=shape, active=scenes.active | True)
    return full.replace(
        size=jax.random.randint(keys[0], full.size.shape, 0, len(sd.SIZE_VALUES)),
        color=jax.random.randint(keys[1], full.color.shape, 0, len(sd.COLOR_LEVELS)),
    )


def jax_renders(scenes: sd.Scene, width: int) -> dict[str, np.ndarray]:
    """rgb [B, W, W, 3], ids and depth [B, W, W] from the JAX renderer.

    rgb is rounded to 8 bits, as the environment's canvas, the dataset's images and
    MuJoCo's output are, so that rounding alone is no error.
    """
    out = jax.jit(jax.vmap(lambda s: scene_render.render_channels(s, width)))(scenes)
    out = {k: np.asarray(v) for k, v in out.items()}
    out["rgb"] = np.round(out["rgb"] * 255.0) / 255.0
    return out


def compare(scenes: sd.Scene, width: int) -> tuple[list[dict], list[np.ndarray], float]:
    """Per-scene agreement, picture rows, and MuJoCo's seconds per scene (3 renders)."""
    n = int(scenes.active.shape[0])
    blank = sd.empty_scene(sd.MAX_OBJECTS)
    # The empty scene rides along as one more scene of the batch (one compilation).
    ours = jax_renders(jax.tree.map(lambda x, b: np.concatenate([x, b[None]]), scenes, blank),
                       width)
    our_blank = ours["rgb"][n]
    their_blank = scene_mjcf.render(blank, width)["rgb"]
    rows, pictures, seconds = [], [], 0.0
    for i in range(n):
        scene = jax.tree.map(lambda x, i=i: np.asarray(x[i]), scenes)
        start = time.perf_counter()
        theirs = scene_mjcf.render(scene, width, ("rgb", "ids", "depth"))
        seconds += time.perf_counter() - start
        mine = {k: v[i] for k, v in ours.items()}
        row = scene_mjcf.agreement(mine, theirs, our_blank, their_blank)
        row["objects"] = int(np.sum(scene.active))
        rows.append(row)
        diff = np.minimum(np.abs(mine["rgb"] - theirs["rgb"]) * 4, 1.0)
        pictures.append(np.stack([mine["rgb"], theirs["rgb"], diff]))
    return rows, pictures, seconds / max(n, 1)


KEYS = ("mae", "fg_iou", "id_agree", "object_iou", "depth_mae")


def report(label: str, rows: list[dict], verbose: bool) -> None:
    print(f"\n{label}: {len(rows)} scenes")
    if verbose:
        print("| scene | objects | " + " | ".join(KEYS) + " |")
        print("|---" * (len(KEYS) + 2) + "|")
        for i, r in enumerate(rows):
            print(f"| {i} | {r['objects']} | " + " | ".join(f"{r[k]:.4f}" for k in KEYS) + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    worst_mae = int(np.argmax([r["mae"] for r in rows]))
    worst_iou = int(np.argmin([r["fg_iou"] for r in rows]))
    print(f"worst mae: scene {worst_mae} ({rows[worst_mae]['mae']:.4f}); "
          f"worst fg_iou: scene {worst_iou} ({rows[worst_iou]['fg_iou']:.4f})")


def main(argv):
    del argv
    width = _WIDTH.value
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; width {width}")
    all_pictures, crowded_pictures = [], []
    if _NUM.value > 0:
        scenes = scene_data.load_scenes("test", max_examples=_NUM.value)
        rows, pictures, sec = compare(scenes, width)
        report(f"held-out dataset scenes (test split, first {_NUM.value})", rows,
               _VERBOSE.value)
        print(f"MuJoCo: {sec:.3f} s a scene (model, context, rgb + ids + depth, close)")
        all_pictures += pictures
    if _CROWDED.value > 0:
        scenes = crowded_scenes(jax.random.key(_SEED.value), _CROWDED.value)
        rows, pictures, _ = compare(scenes, width)
        report(f"crowded scenes (20 objects, seed {_SEED.value})", rows, _VERBOSE.value)
        crowded_pictures = pictures[:2]
    if _OUT.value and (all_pictures or crowded_pictures):
        # The first dataset scenes, and the first two crowded ones in the last rows.
        keep = all_pictures[: max(_ROWS.value - len(crowded_pictures), 0)] + crowded_pictures
        out = pathlib.Path(_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_grid(out, np.concatenate(keep), ncols=3)
        print(f"wrote {out}: columns JAX, MuJoCo, 4 x |difference|")


if __name__ == "__main__":
    app.run(main)
