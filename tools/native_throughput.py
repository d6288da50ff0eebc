"""libmypaint's steps per second, one process per core: the baseline of
`experiments.bench_env`.

It lives apart from the benchmark script so that it can be imported (and tested)
without the script's absl flags; its worker processes run this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

import numpy as np

from tools import native_libmypaint

_WORKER_MODULE = "tools.native_throughput"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m {_WORKER_MODULE} ACTIONS.npz SETTINGS_JSON (internal)")
    _throughput_worker(sys.argv[1], sys.argv[2])
