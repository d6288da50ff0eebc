r"""Scene renders per second: the batched JAX ray caster against MuJoCo, in one run.

    python -m experiments.bench_scene_render
    python -m experiments.bench_scene_render --batch_sizes=64,256 --width=64 --repeats=3

JAX: `jit(vmap(render))` over held-out dataset scenes (1 to 5 objects in 20 slots; the
cost does not depend on how many are active), and `Scenes` steps in
`jit(vmap(play))` over whole random episodes (one render a step), timed after a
warm-up call. MuJoCo (`spiral_jax.envs.scene_mjcf`, OSMesa): the same scenes one at a
time, both as `scene_mjcf.render` does it (compile the model, open a renderer, render,
close) and as its best case (one model and renderer kept open, rendering only). Prints
a table; the best of `--repeats` timings counts, as the machine may be shared.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax import scene_data
from spiral_jax.envs import scene_mjcf, scene_render
from spiral_jax.envs.scenes import Scenes, play

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16", "64", "256"], "Scenes at once.")
_WIDTH = flags.DEFINE_integer("width", 64, "Image side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement; the best counts.")
_MUJOCO_SCENES = flags.DEFINE_integer("mujoco_scenes", 20, "Scenes MuJoCo renders.")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def jax_renders_per_second(batch: int, width: int, repeats: int) -> float:
    scenes = jax.tree.map(jnp.asarray, scene_data.load_scenes("test", max_examples=batch))
    fn = jax.jit(jax.vmap(lambda s: scene_render.render(s, width)))
    jax.block_until_ready(fn(scenes))
    return batch / _best(lambda: fn(scenes), repeats)


def jax_steps_per_second(batch: int, width: int, repeats: int) -> float:
    env = Scenes(canvas_width=width)
    steps = env.episode_length - 1
    rng = np.random.default_rng(0)
    actions = {k: jnp.asarray(rng.integers(0, n, (steps, batch)), jnp.int32)
               for k, n in env.action_spec().items()}
    keys = jax.random.split(jax.random.key(0), batch)
    fn = jax.jit(jax.vmap(lambda k, a: play(env, k, a), in_axes=(0, 1)))
    jax.block_until_ready(fn(keys, actions))
    return batch * steps / _best(lambda: fn(keys, actions), repeats)


def mujoco_renders_per_second(num: int, width: int) -> tuple[float, float]:
    """(full: model + renderer + render + close, render only on an open renderer)."""
    scenes = scene_data.load_scenes("test", max_examples=num)
    one = [jax.tree.map(lambda x, i=i: x[i], scenes) for i in range(num)]
    start = time.perf_counter()
    for scene in one:
        scene_mjcf.render(scene, width)
    full = num / (time.perf_counter() - start)
    mujoco = scene_mjcf._import_mujoco()
    model = mujoco.MjModel.from_xml_string(scene_mjcf.to_mjcf(one[0], width))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, width, width)
    try:
        renderer.update_scene(data, camera="main")
        renderer.render()
        start = time.perf_counter()
        for _ in range(num):
            renderer.update_scene(data, camera="main")
            renderer.render()
        fast = num / (time.perf_counter() - start)
    finally:
        renderer.close()
    return full, fast


def main(argv):
    del argv
    width, repeats = _WIDTH.value, _REPEATS.value
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; width {width}; "
          f"best of {repeats}")
    print("| runner | batch | per second |")
    print("|---|---|---|")
    for b in (int(x) for x in _BATCH_SIZES.value):
        print(f"| JAX render (scenes) | {b} | {jax_renders_per_second(b, width, repeats):,.0f} |")
    for b in (int(x) for x in _BATCH_SIZES.value):
        print(f"| JAX Scenes.step (steps) | {b} | {jax_steps_per_second(b, width, repeats):,.0f} |")
    try:
        full, fast = mujoco_renders_per_second(_MUJOCO_SCENES.value, width)
    except Exception as e:  # noqa: BLE001  (no mujoco or no OpenGL here)
        print(f"MuJoCo skipped: {type(e).__name__}: {e}")
        return
    print(f"| MuJoCo: model, renderer, render, close | 1 | {full:,.1f} |")
    print(f"| MuJoCo: render only, renderer kept open | 1 | {fast:,.1f} |")


if __name__ == "__main__":
    app.run(main)
