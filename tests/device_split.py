"""One train step of `small` on one device and split over two: the same step.

Run in a fresh process with two simulated CPU devices (the device count is fixed when
jax starts), by `run_split` below:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.device_split --members=1

`--members=1` splits the batch over the devices (data parallel); `--members=2` trains a
population of two sharing one critic, one member per device. Prints OK when the two
runs agree; an assertion names what differs otherwise.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_split(members: int, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs this module in a subprocess with two simulated devices."""
    env = dict(os.environ, PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run(
        [sys.executable, "-m", "tests.device_split", f"--members={members}"],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(members: int) -> None:
    from experiments.configs import small
    from spiral_jax import datasets, experiment, sharding, train_step

    assert jax.device_count() == 2, jax.devices()
    config = small.get_config()
    # Adam's first step is lr * sign(g) wherever |g| >> eps: a gradient that is zero up
    # to rounding could flip a whole step. A large eps makes the step linear in g.
    config.learner.eps = config.disc_learner.eps = 1.0
    config.population.size = members
    data = datasets.load("mnist5k", "train", image_size=16, channels=1, max_examples=256)

    def run(devices):
        mesh = sharding.make_mesh(devices, len(devices) if members > 1 else 1)
        exp = experiment.build(config, mesh=mesh, dataset=data)
        state = exp.init_state(jax.random.PRNGKey(0))
        start = jax.device_get(state)
        state, metrics = train_step.make_train_step(exp)(state, jax.random.PRNGKey(5))
        spec = jax.tree.leaves(state.policy_params)[0].sharding.spec
        return start, spec, *jax.device_get((state, metrics))

    start, _, one, m1 = run(jax.devices()[:1])
    _, spec, two, m2 = run(jax.devices())
    names = ["policy_params", "disc_params"]
    min_update = 1e-7  # an update this small would make the comparison vacuous
    if members > 1:
        min_update = 1e-8  # the population test's bound, as it was
        assert tuple(spec) == ("members",), spec  # each device holds its own member
        names.append("policy_ema")
    for name in names:
        worst = _max_abs_diff(getattr(one, name), getattr(two, name))
        moved = _max_abs_diff(getattr(one, name), getattr(start, name))
        print(name, "max abs diff", worst, "largest update", moved)
        assert moved > min_update and worst < 1e-3 * moved, (name, worst, moved)
    if members > 1:
        # Each member's episodes stay on its device, painted as on one device.
        np.testing.assert_array_equal(one.replay.canvases, two.replay.canvases)
    else:
        # Each device keeps its half of the batch's episodes in its part of the replay.
        b = config.batch_size
        halves = np.asarray(two.replay.canvases).reshape(
            (2, -1) + two.replay.canvases.shape[1:])
        painted_two = np.concatenate([halves[0, : b // 2], halves[1, : b // 2]])
        painted_one = np.asarray(one.replay.canvases)[:b]
        assert np.abs(painted_one.astype(int) - painted_two.astype(int)).max() <= 1
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-5, err_msg=k)
    print("OK")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, choices=(1, 2), required=True)
    main(parser.parse_args().members)
