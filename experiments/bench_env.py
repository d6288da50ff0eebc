r"""Environment steps per second: the batched JAX environments against their real engines.

    python -m experiments.bench_env
    python -m experiments.bench_env --batch_sizes=256,1024 --no_jitter
    python -m experiments.bench_env --env=scenes
    python -m experiments.bench_env --env=scenes --batch_sizes=64,256 --width=64

`--env=libmypaint` (the default): LibMyPaint against libmypaint.

Both sides step the same random episodes (flag = 1 with probability 0.7, other parts
uniform, 19 steps after each reset, SPIRAL's paper settings: 64x64, grid 32, sizes
1-24, colour, pressure). The JAX side times `jit(scan(vmap(step)))` over whole
episodes after a warm-up call, resets included but not counted as steps. libmypaint
runs through the ctypes binding `tools.native_libmypaint` in one process, then in one
process per core (`tools.native_throughput`); it is skipped with a message where
libmypaint is not installed.

`--env=scenes`: `jit(vmap(render))` over held-out dataset scenes (1 to 5 objects in 20
slots; the cost does not depend on how many are active) and `Scenes` steps in
`jit(vmap(play))` over whole random episodes (one render a step), timed after a
warm-up call, against MuJoCo (`spiral_jax.envs.scene_mjcf`, OSMesa) rendering the same
scenes one at a time, both as `scene_mjcf.render` does it (compile the model, open a
renderer, render, close) and as its best case (one model and renderer kept open,
rendering only). The best of `--repeats` timings counts, as the machine may be shared.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax import scene_data
from spiral_jax.envs import scene_mjcf, scene_render
from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.envs.scenes import Scenes, play
from tools import native_libmypaint
from tools.native_throughput import native_steps_per_second

_ENV = flags.DEFINE_enum("env", "libmypaint", ["libmypaint", "scenes"], "Environment.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", [], "Episodes stepped in parallel (default: 1,4,16,64,256,1024 for "
    "libmypaint, 1,16,64,256 for scenes)."
)
_STEPS = flags.DEFINE_integer("steps", 19, "Steps per episode after the reset.")
_NATIVE_EPISODES = flags.DEFINE_integer("native_episodes", 128, "Episodes for libmypaint.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "Time each JAX batch size at least this.")
_JITTER = flags.DEFINE_bool("jitter", True, "Brush jitter on (dry_brush as shipped).")
_DAB_BUDGET = flags.DEFINE_integer("dab_budget", 64, "Virtual dabs per stroke (JAX side).")
_WIDTH = flags.DEFINE_integer("width", 64, "Scenes: image side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Scenes: timings per measurement; best counts.")
_MUJOCO_SCENES = flags.DEFINE_integer("mujoco_scenes", 20, "Scenes: scenes MuJoCo renders.")
_P_PAINT = 0.7
_DEFAULT_BATCHES = {"libmypaint": (1, 4, 16, 64, 256, 1024), "scenes": (1, 16, 64, 256)}


def random_actions(spec: dict[str, int], episodes: int, steps: int, seed: int) -> dict:
    """Actions [episodes, steps] drawn like the fixtures'."""
    rng = np.random.default_rng(seed)
    shape = (episodes, steps)
    actions = {k: rng.integers(0, n, size=shape, dtype=np.int32) for k, n in spec.items()}
    actions["flag"] = (rng.random(shape) < _P_PAINT).astype(np.int32)
    return actions


def jax_steps_per_second(env: LibMyPaint, batch: int, steps: int, min_seconds: float) -> float:
    actions = random_actions(env.action_spec(), batch, steps, seed=batch)
    time_major = {k: jnp.asarray(v.T) for k, v in actions.items()}
    keys = jax.random.split(jax.random.PRNGKey(0), batch)

    @jax.jit
    def run(keys, actions):
        state, _ = jax.vmap(env.reset)(keys)

        def body(s, a):
            s, ts = jax.vmap(env.step)(s, a)
            return s, None

        state, _ = jax.lax.scan(body, state, actions)
        return state.canvas

    run(keys, time_major).block_until_ready()
    calls, start = 0, time.perf_counter()
    while True:
        run(keys, time_major).block_until_ready()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * batch * steps / elapsed


def _best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def scene_renders_per_second(batch: int, width: int, repeats: int) -> float:
    scenes = jax.tree.map(jnp.asarray, scene_data.load_scenes("test", max_examples=batch))
    fn = jax.jit(jax.vmap(lambda s: scene_render.render(s, width)))
    jax.block_until_ready(fn(scenes))
    return batch / _best_seconds(lambda: fn(scenes), repeats)


def scene_steps_per_second(batch: int, width: int, repeats: int) -> float:
    env = Scenes(canvas_width=width)
    steps = env.episode_length - 1
    rng = np.random.default_rng(0)
    actions = {k: jnp.asarray(rng.integers(0, n, (steps, batch)), jnp.int32)
               for k, n in env.action_spec().items()}
    keys = jax.random.split(jax.random.key(0), batch)
    fn = jax.jit(jax.vmap(lambda k, a: play(env, k, a), in_axes=(0, 1)))
    jax.block_until_ready(fn(keys, actions))
    return batch * steps / _best_seconds(lambda: fn(keys, actions), repeats)


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


def bench_scenes(batches: tuple[int, ...]) -> None:
    width, repeats = _WIDTH.value, _REPEATS.value
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; width {width}; "
          f"best of {repeats}")
    rows = []
    for b in batches:
        rows.append(("JAX render (scenes)", b, scene_renders_per_second(b, width, repeats)))
        print(f"  JAX render  batch {b:>5}: {rows[-1][2]:>10,.0f} renders/s", flush=True)
    for b in batches:
        rows.append(("JAX Scenes steps (one render each)", b,
                     scene_steps_per_second(b, width, repeats)))
        print(f"  JAX steps   batch {b:>5}: {rows[-1][2]:>10,.0f} steps/s", flush=True)
    try:
        full, fast = mujoco_renders_per_second(_MUJOCO_SCENES.value, width)
    except Exception as e:  # noqa: BLE001  (no mujoco or no OpenGL here)
        print(f"  MuJoCo skipped: {type(e).__name__}: {e}")
        fast = None
    else:
        rows += [("MuJoCo: model, renderer, render, close", 1, full),
                 ("MuJoCo: render only, renderer kept open", 1, fast)]
    print("\n| runner | batch | per second |" + (" vs MuJoCo's best |" if fast else ""))
    print("|---|---|---|" + ("---|" if fast else ""))
    for name, b, per_second in rows:
        ratio = f" {per_second / fast:.1f}x |" if fast else ""
        print(f"| {name} | {b} | {per_second:,.1f} |{ratio}")


def main(argv):
    del argv
    batches = tuple(int(b) for b in _BATCH_SIZES.value) or _DEFAULT_BATCHES[_ENV.value]
    if any(b < 1 for b in batches):
        raise app.UsageError(f"--batch_sizes={_BATCH_SIZES.value}: each must be >= 1")
    if _ENV.value == "scenes":
        bench_scenes(batches)
        return
    env = LibMyPaint(
        episode_length=_STEPS.value + 1, brush_jitter=_JITTER.value, dab_budget=_DAB_BUDGET.value
    )
    device = jax.devices()[0]
    cores = os.cpu_count() or 1
    print(f"JAX {jax.__version__} on {device.platform} ({device.device_kind}), {cores} CPU cores")
    print(f"jitter={_JITTER.value} dab_budget={_DAB_BUDGET.value} steps/episode={_STEPS.value}")
    rows = []
    for batch in batches:
        sps = jax_steps_per_second(env, batch, _STEPS.value, _MIN_SECONDS.value)
        rows.append((f"spiral-jax, batch {batch}", sps))
        print(f"  spiral-jax  batch {batch:>5}: {sps:>12,.0f} steps/s", flush=True)

    if native_libmypaint.available():
        actions = random_actions(env.action_spec(), _NATIVE_EPISODES.value, _STEPS.value, seed=0)
        for procs in sorted({1, cores}):
            sps = native_steps_per_second(actions, procs, jitter=_JITTER.value)
            rows.append((f"libmypaint, {procs} process(es)", sps))
            print(f"  libmypaint  {procs} process(es): {sps:>12,.0f} steps/s", flush=True)
    else:
        print(f"  libmypaint skipped: {native_libmypaint.unavailable_reason()}")

    baseline = next((s for name, s in reversed(rows) if name.startswith("libmypaint")), None)
    print("\n| runner | steps/s |" + (" vs libmypaint, all cores |" if baseline else ""))
    print("|---|---|" + ("---|" if baseline else ""))
    for name, sps in rows:
        ratio = f" {sps / baseline:.2f}x |" if baseline else ""
        print(f"| {name} | {sps:,.0f} |{ratio}")


if __name__ == "__main__":
    app.run(main)
