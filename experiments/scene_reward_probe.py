r"""What one added object pays under pooled L2 rewards at several scales (docs/scenes.md).

    python -m experiments.scene_reward_probe
    python -m experiments.scene_reward_probe --num=400 --pools="1;4,8,16,32"

For `--num` training scenes, the per-step reward of adding one object to the empty floor
(the change of `spiral_jax.rewards.l2_score` against the target, in units of 1e-3), for
three objects: one of random type, cell, size and colour; one in the cell of the
target's first object with random type, size and colour; and the target's first object
itself. Prints the mean and, in brackets, the fraction of scenes where it pays (> 0).
This is why `scenes_cpu` rewards coarse scales: at full resolution a wrong cell costs
far more than the right one gains, and an agent learns to add nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax import rewards, scene_data
from spiral_jax.envs import scene_description as sd
from spiral_jax.scene_mh import observe

_NUM = flags.DEFINE_integer("num", 400, "Training scenes probed.")
_WIDTH = flags.DEFINE_integer("width", 32, "Canvas side in pixels.")
_POOLS = flags.DEFINE_string("pools", "1;1,2,4,8;4,8,16,32;8,16,32",
                             "Sets of average-pooling scales, separated by ';'.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random attributes.")
_SLOTS = 10


def _one_object(position, shape, size, color) -> sd.Scene:
    s = sd.empty_scene(_SLOTS)
    return s.replace(shape=s.shape.at[0].set(shape), position=s.position.at[0].set(position),
                     size=s.size.at[0].set(size), color=s.color.at[0].set(color),
                     active=s.active.at[0].set(True))


def main(argv: list[str]) -> None:
    del argv
    n, width = _NUM.value, _WIDTH.value
    pools_list = [tuple(int(p) for p in group.split(",")) for group in _POOLS.value.split(";")]
    for pools in pools_list:
        rewards.check_pools(pools, width)
    scenes = jax.tree.map(jnp.asarray,
                          scene_data.load_scenes("train", max_examples=n, max_objects=_SLOTS))
    targets = jax.jit(jax.vmap(lambda s: observe(s, width)))(scenes)
    k_pos, k_shape, k_size, k_color = jax.random.split(jax.random.key(_SEED.value), 4)
    shape = jax.random.randint(k_shape, (n,), 0, len(sd.SHAPES))
    size = jax.random.randint(k_size, (n,), 0, len(sd.SIZE_VALUES))
    color = jax.random.randint(k_color, (n, 3), 0, len(sd.COLOR_LEVELS))
    draw = jax.jit(jax.vmap(lambda *a: observe(_one_object(*a), width)))
    first = scenes.position[:, 0]
    canvases = {
        "a random object": draw(jax.random.randint(k_pos, (n,), 0, sd.GRID_WIDTH**2),
                                shape, size, color),
        "the right cell, random type, size, colour": draw(first, shape, size, color),
        "the exact object": draw(first, scenes.shape[:, 0], scenes.size[:, 0],
                                 scenes.color[:, 0]),
    }
    blank = jnp.broadcast_to(observe(sd.empty_scene(_SLOTS), width), targets.shape)
    print(f"reward of adding one object to the empty floor, x1e-3 (fraction > 0); "
          f"{n} training scenes at {width}x{width}")
    print("| scales | " + " | ".join(canvases) + " |")
    print("|---" * (len(canvases) + 1) + "|")
    for pools in pools_list:
        before = rewards.l2_score(blank, targets, pools)
        cells = []
        for canvas in canvases.values():
            r = np.asarray(rewards.l2_score(canvas, targets, pools) - before)
            cells.append(f"{r.mean() * 1e3:+.2f} ({(r > 0).mean():.0%})")
        print(f"| {', '.join(map(str, pools))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
