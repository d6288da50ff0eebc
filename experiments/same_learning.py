r"""python -m experiments.same_learning --out=/tmp/new.json --steps=200

Whether a change to how the train step computes (not what) leaves learning alone:
records every step's metrics of a config for a fixed seed, and compares recordings.

    # on each commit (a checkout of the old one in another directory), and the old
    # one again split over 2 simulated devices, whose differences are float noise only:
    python -m experiments.same_learning --out=/tmp/old.json
    python -m experiments.same_learning --out=/tmp/new.json
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m experiments.same_learning --out=/tmp/old_2dev.json
    python -m experiments.same_learning --compare=/tmp/old.json,/tmp/new.json,/tmp/old_2dev.json

Sampled actions amplify any rounding difference, so no two of these runs stay equal
step for step; the comparison gives, per metric, the first step at which each run
leaves the first by more than 1e-6 (relative), and each run's mean over the second half.
"""

from __future__ import annotations

import importlib
import json
import time

import jax
import numpy as np
from absl import app, flags

from experiments import configs
from spiral_jax import experiment, train_step

_CONFIG = flags.DEFINE_enum("config", "mnist5k", configs.names(), "Config name.")
_STEPS = flags.DEFINE_integer("steps", 200, "Train steps recorded.")
_OUT = flags.DEFINE_string("out", None, "Write the recording here (JSON).")
_COMPARE = flags.DEFINE_list("compare", None, "Recordings to compare with the first.")


def record(name: str, steps: int, out: str) -> None:
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    exp = experiment.build(config)
    state = exp.init_state(jax.random.PRNGKey(config.seed))
    step = train_step.make_train_step(exp)
    rows, start = [], time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, jax.random.fold_in(jax.random.PRNGKey(1), i))
        rows.append({k: float(np.asarray(v)) for k, v in metrics.items()})
        if i % 50 == 0:
            print(f"step {i}: {time.perf_counter() - start:.0f} s", flush=True)
    with open(out, "w") as f:
        json.dump(dict(config=name, devices=jax.device_count(), metrics=rows), f)
    print(f"{steps} steps on {jax.device_count()} device(s) -> {out}")


def first_difference(a: list[dict], b: list[dict], key: str, rtol: float = 1e-6) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if abs(x[key] - y[key]) > rtol * max(1.0, abs(x[key])):
            return i
    return None


def compare(paths: list[str]) -> None:
    runs = []
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        runs.append(data["metrics"] if isinstance(data, dict) else data)
    half = len(runs[0]) // 2
    print("| metric | " + " | ".join(f"first step {p} differs" for p in paths[1:])
          + " | " + " | ".join(f"mean, steps {half + 1}-{len(runs[0])}, {p}" for p in paths)
          + " |")
    print("|---" * (2 * len(paths)) + "|")
    for key in runs[0][0]:
        firsts = [str(first_difference(runs[0], r, key)) for r in runs[1:]]
        means = [f"{np.mean([m[key] for m in r[half:]]):.4g}" for r in runs]
        print(f"| {key} | " + " | ".join(firsts) + " | " + " | ".join(means) + " |")


def main(argv: list[str]) -> None:
    del argv
    if _COMPARE.value:
        compare(_COMPARE.value)
    elif _OUT.value:
        record(_CONFIG.value, _STEPS.value, _OUT.value)
    else:
        raise app.UsageError("give --out=FILE (record) or --compare=A,B[,C] (compare)")


if __name__ == "__main__":
    app.run(main)
