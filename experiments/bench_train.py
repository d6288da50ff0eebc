r"""Training frames per second against the number of (simulated) devices.

    python -m experiments.bench_train
    python -m experiments.bench_train --configs=mnist5k --devices=1,2,4 --steps=5
    python -m experiments.bench_train --configs=mnist5k --devices=1 --population=1,2,4
    python -m experiments.bench_train --configs=small --devices=2 --population=2 --member_shards=1,2

Each (config, device count) runs in its own process, because JAX fixes the device
count when it starts: on a CPU, `--xla_force_host_platform_device_count=N` splits the
same cores into N simulated devices, so this shows that sharding works and what it
costs, not a speed-up (that needs real accelerators). A frame is one environment step
(one agent decision). The first step (compilation) is not timed. Each row gives train
steps/s, frames/s, and the FLOP/s they make (XLA's cost analysis of the compiled step,
per process). With --population, each config also runs as populations of those sizes
(`spiral_jax.population`, one vmapped step; --noshared_disc: a D per member): frames/s
then count every member's, and "per member" divides by the size; --member_shards sets
how many device groups the members are split over ("groups"; 0: as many as divide
both the size and the device count).

`paper` is SPIRAL's network and 64x64 canvas (the `mnist` config) on the offline
mnist5k data; `--paper_batch` shrinks its batch so that a CPU finishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_CONFIGS = flags.DEFINE_list(
    "configs", ["small", "mnist5k", "paper"],
    "Configs to time: names in experiments/configs, or paper (see above).")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "Simulated device counts.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per run.")
_PAPER_BATCH = flags.DEFINE_integer("paper_batch", 16, "Batch of the paper-sized run (0: 64).")
_POPULATION = flags.DEFINE_list("population", ["1"], "Population sizes to time.")
_SHARED_DISC = flags.DEFINE_bool("shared_disc", True, "A population shares one D.")
_MEMBER_SHARDS = flags.DEFINE_list("member_shards", ["0"],
                                   "Device groups a population is split over (0: auto).")

_CHILD = r"""
import importlib, json, sys, time
import jax
from experiments.configs import mnist
from spiral_jax import experiment, train_step
name, steps, paper_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
population, shared_disc = int(sys.argv[4]), sys.argv[5] == "1"
member_shards = int(sys.argv[6])
if name == "paper":
    config = mnist.get_config()
    config.dataset = "mnist5k"
    config.max_examples = 1000
    if paper_batch:
        config.batch_size = paper_batch
else:
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
config.population.size = population
config.population.shared_disc = shared_disc
config.population.member_shards = member_shards if population > 1 else 0
exp = experiment.build(config)
state = exp.init_state(jax.random.PRNGKey(0))
step = train_step.make_train_step(exp)
start = time.perf_counter()
state, metrics = step(state, jax.random.PRNGKey(0))
jax.block_until_ready(metrics)
compile_s = time.perf_counter() - start
start = time.perf_counter()
for i in range(steps):
    state, metrics = step(state, jax.random.PRNGKey(i + 1))
jax.block_until_ready(metrics)
seconds = time.perf_counter() - start
cost = step.lower(state, jax.random.PRNGKey(0)).compile().cost_analysis()
flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", "nan"))
print(json.dumps(dict(
    devices=jax.device_count(), batch=config.batch_size, groups=exp.member_shards,
    frames_per_step=exp.frames_per_step(), compile_s=compile_s,
    fps=exp.frames_per_step() * steps / seconds, platform=jax.devices()[0].platform,
    steps_per_s=steps / seconds, gflops=flops * steps / seconds / 1e9,
)))
"""


def run_one(name: str, devices: int, steps: int, paper_batch: int, population: int = 1,
            shared_disc: bool = True, member_shards: int = 0) -> dict:
    env = dict(os.environ)
    flags_ = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count={devices}".strip()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(steps), str(paper_batch), str(population),
         str(int(shared_disc)), str(member_shards)],
        env=env, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} on {devices} devices failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "population": population}


def main(argv):
    del argv
    print(f"{os.cpu_count()} CPU cores; {_STEPS.value} timed steps per run")
    print(
        "| config | devices | population | groups | batch | frames/step | compile s "
        "| steps/s | frames/s | per member | GFLOP/s | vs first row |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in _CONFIGS.value:
        base = None
        for devices in (int(d) for d in _DEVICES.value):
            for size in (int(n) for n in _POPULATION.value):
                # A single agent has one group; a population each group count asked for.
                for shards in sorted({int(g) if size > 1 else 0 for g in _MEMBER_SHARDS.value}):
                    r = run_one(name, devices, _STEPS.value, _PAPER_BATCH.value, size,
                                _SHARED_DISC.value, shards)
                    per_member = r["fps"] / size
                    base = base or per_member
                    print(
                        f"| {name} | {r['devices']} ({r['platform']}) | {size} | "
                        f"{r['groups']} | {r['batch']} | {r['frames_per_step']} | "
                        f"{r['compile_s']:.0f} | {r['steps_per_s']:.2f} | {r['fps']:,.0f} | "
                        f"{per_member:,.0f} | {r['gflops']:.0f} | {per_member / base:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    app.run(main)
