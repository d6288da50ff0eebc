r"""Environment steps per second: the batched JAX LibMyPaint against the real libmypaint.

    python -m experiments.bench_env
    python -m experiments.bench_env --batch_sizes=256,1024 --no_jitter

Both sides step the same random episodes (flag = 1 with probability 0.7, other parts
uniform, 19 steps after each reset, SPIRAL's paper settings: 64x64, grid 32, sizes
1-24, colour, pressure). The JAX side times `jit(scan(vmap(step)))` over whole
episodes after a warm-up call, resets included but not counted as steps. libmypaint
runs through our ctypes binding in one process, then in one process per core; it is
skipped with a message where libmypaint is not installed.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.testing import native_libmypaint

_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["1", "4", "16", "64", "256", "1024"], "Episodes stepped in parallel."
)
_STEPS = flags.DEFINE_integer("steps", 19, "Steps per episode after the reset.")
_NATIVE_EPISODES = flags.DEFINE_integer("native_episodes", 128, "Episodes for libmypaint.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "Time each JAX batch size at least this.")
_JITTER = flags.DEFINE_bool("jitter", True, "Brush jitter on (dry_brush as shipped).")
_DAB_BUDGET = flags.DEFINE_integer("dab_budget", 64, "Virtual dabs per stroke (JAX side).")
_P_PAINT = 0.7


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


def main(argv):
    del argv
    env = LibMyPaint(
        episode_length=_STEPS.value + 1, brush_jitter=_JITTER.value, dab_budget=_DAB_BUDGET.value
    )
    device = jax.devices()[0]
    cores = os.cpu_count() or 1
    print(f"JAX {jax.__version__} on {device.platform} ({device.device_kind}), {cores} CPU cores")
    print(f"jitter={_JITTER.value} dab_budget={_DAB_BUDGET.value} steps/episode={_STEPS.value}")
    rows = []
    for batch in (int(b) for b in _BATCH_SIZES.value):
        sps = jax_steps_per_second(env, batch, _STEPS.value, _MIN_SECONDS.value)
        rows.append((f"spiral-jax, batch {batch}", sps))
        print(f"  spiral-jax  batch {batch:>5}: {sps:>12,.0f} steps/s", flush=True)

    if native_libmypaint.available():
        actions = random_actions(env.action_spec(), _NATIVE_EPISODES.value, _STEPS.value, seed=0)
        for procs in sorted({1, cores}):
            sps = native_steps_per_second(actions, procs)
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


def native_steps_per_second(actions: dict, processes: int) -> float:
    return native_libmypaint.native_steps_per_second(
        actions, processes, jitter=_JITTER.value
    )


if __name__ == "__main__":
    app.run(main)
