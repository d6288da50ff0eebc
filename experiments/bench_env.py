r"""Environment steps per second: the batched JAX LibMyPaint against the real libmypaint.

    python -m experiments.bench_env
    python -m experiments.bench_env --batch_sizes=256,1024 --no_jitter

Both sides step the same random episodes (flag = 1 with probability 0.7, other parts
uniform, 19 steps after each reset, SPIRAL's paper settings: 64x64, grid 32, sizes
1-24, colour, pressure). The JAX side times `jit(scan(vmap(step)))` over whole
episodes after a warm-up call, resets included but not counted as steps. libmypaint
runs through the ctypes binding `tools.native_libmypaint` in one process, then in one
process per core (`native_steps_per_second`); it is skipped with a message where
libmypaint is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax.envs.libmypaint import LibMyPaint
from tools import native_libmypaint

# The module the libmypaint workers run (`python -m`): `__name__` is "__main__" when
# this file is run as a script, so it is spelled out.
_WORKER_MODULE = "experiments.bench_env"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def _throughput_worker(npz_path: str, settings_json: str) -> None:
    """Child side of `native_steps_per_second`: ready, wait for go, render, report."""
    settings = json.loads(settings_json)
    env = native_libmypaint.NativeLibMyPaint(**settings)
    with np.load(npz_path) as data:
        actions = {n: data[n] for n in data.files}
    arrays, k_eps, t_steps = native_libmypaint.episode_arrays(actions, env.action_spec)
    steps = [
        [{n: int(a[k, t]) for n, a in arrays.items()} for t in range(t_steps)] for k in range(k_eps)
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for episode in steps:
        env.reset()
        for action in episode:
            env.step(action)
    print(f"done {time.perf_counter() - start!r}", flush=True)
    env.close()


def native_steps_per_second(
    actions: Mapping[str, np.ndarray], n_processes: int = 1, **settings
) -> float:
    """Environment steps per second of libmypaint, one process per core.

    The K episodes of `actions` (name -> int [K, T]) are split evenly over `n_processes`
    fresh Python processes (plain subprocesses: safe whatever the caller's `__main__` is,
    and after JAX has started its threads). Each builds its environment and reports
    ready; then all start together and the clock runs until the last one is done, so
    process start-up is not timed. Steps are paint/move steps (K * T); resets are timed
    but not counted; every step reads the canvas back, as SPIRAL's observation does.
    `settings` are `tools.native_libmypaint.NativeLibMyPaint`'s keyword arguments.
    """
    if int(n_processes) != n_processes or n_processes < 1:
        raise ValueError(f"n_processes={n_processes!r}: must be a positive integer")
    if not native_libmypaint.available():
        raise RuntimeError(native_libmypaint.unavailable_reason())
    settings = dict(settings)
    if "brush_sizes" in settings:
        settings["brush_sizes"] = [float(s) for s in settings["brush_sizes"]]
    env = native_libmypaint.NativeLibMyPaint(**settings)
    spec = env.action_spec
    env.close()
    arrays, k_eps, t_steps = native_libmypaint.episode_arrays(actions, spec)
    if k_eps < n_processes:
        raise ValueError(f"{k_eps} episodes cannot be shared by n_processes={n_processes}")
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p
    )
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i, idx in enumerate(np.array_split(np.arange(k_eps), n_processes)):
                path = os.path.join(tmp, f"actions_{i}.npz")
                np.savez(path, **{n: a[idx] for n, a in arrays.items()})
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            _WORKER_MODULE,
                            "--throughput-worker",
                            path,
                            json.dumps(settings),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env=child_env,
                    )
                )
            for p in procs:
                line = p.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"libmypaint throughput worker failed to start: {line!r}")
            start = time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                line = p.stdout.readline().strip()
                if not line.startswith("done"):
                    raise RuntimeError(f"libmypaint throughput worker failed: {line!r}")
            elapsed = time.perf_counter() - start
        finally:
            for p in procs:
                try:
                    p.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
    return k_eps * t_steps / elapsed


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--throughput-worker":
        if len(sys.argv) != 4:
            sys.exit(
                "usage: python -m experiments.bench_env "
                "--throughput-worker ACTIONS.npz SETTINGS_JSON (internal)"
            )
        _throughput_worker(sys.argv[2], sys.argv[3])
    else:
        app.run(main)
