r"""python -m experiments.profile_step --config=mnist5k

Where a bare train step's time goes, by phase: per-operation times from a
`jax.profiler` trace of a few steps of `train_step.make_train_step` for a config in
experiments/configs (one device), each operation put in a phase by the JAX operation
it comes from (the HLO's metadata, as `experiments.profile_learner` reads it):

* rollout: the agent and the brush engine stepping through the episodes;
* policy forward / backward: the learner's passes (`SpiralAgent.unroll` and its
  gradient), split into the torso (canvas encoder), the LSTM core, the location
  decoders and the other heads;
* critic: the discriminator's scores and its updates (gradient penalty included);
* other: rewards, optimisers, metrics, and operations without metadata.

Operations run on two threads at once, so a phase's figure is operation time, not
wall time; a conditional's or a loop's own event, which covers the operations inside
it, is left out so that nothing is counted twice.

It also prints one untraced step's minor page faults and system CPU time: near 0 when
`experiment.build` could keep the process's freed memory (`xla_cpu.keep_host_memory`);
`JAX_CPU_ENABLE_ASYNC_DISPATCH=true` in the environment turns that off, for comparison.
"""

from __future__ import annotations

import collections
import importlib
import time

import jax
import numpy as np
from absl import app, flags

from experiments.profiling import call_cost, op_times, phase_of, top_operations
from spiral_jax import experiment, train_step

_CONFIG = flags.DEFINE_string("config", "mnist5k", "A config in experiments/configs.")
_STEPS = flags.DEFINE_integer("steps", 5, "Traced steps (after a few untraced).")
_TOP = flags.DEFINE_integer("top", 15, "Operations listed after the phases.")


def main(argv: list[str]) -> None:
    del argv
    config = importlib.import_module(f"experiments.configs.{_CONFIG.value}").get_config()
    exp = experiment.build(config)
    state = exp.init_state(jax.random.PRNGKey(0))
    step = train_step.make_train_step(exp)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 5 + 2 * _STEPS.value))
    seconds = []
    for _ in range(3 + _STEPS.value):  # compile, warm up, then time untraced
        start = time.perf_counter()
        state, metrics = step(state, next(keys))
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds[3:]))
    print(f"[{_CONFIG.value}] {median * 1e3:.0f} ms a step (median of {_STEPS.value}), "
          f"{exp.frames_per_step() / median:.0f} frames/s")

    def one_step() -> dict:
        nonlocal state
        state, metrics = step(state, next(keys))
        return metrics

    faults, system_s = call_cost(one_step)
    print(f"one more step: {faults:,} page faults, {system_s * 1e3:.0f} ms of system time")
    # The names in the trace are those of the compiled step's HLO. (Lowered before the
    # traced steps: they donate `state`.)
    hlo = step.lower(state, next(keys)).compile().as_text()

    def run() -> None:
        nonlocal state
        for _ in range(_STEPS.value):
            state, metrics = step(state, next(keys))
            jax.block_until_ready(metrics)

    times, sources = op_times(run, hlo)
    total = sum(times.values())
    phases: collections.Counter[str] = collections.Counter()
    for name, us in times.items():
        phases[phase_of(sources[name][1])] += us
    per_step = lambda us: us / _STEPS.value / 1e3  # noqa: E731
    print(f"traced operation time {per_step(total):.0f} ms a step\n")
    print("| phase | ms a step | share |\n|---|---|---|")
    for phase, us in phases.most_common():
        print(f"| {phase} | {per_step(us):.1f} | {100 * us / total:.1f} % |")
    print()
    print("\n".join(top_operations(times, sources, _STEPS.value, "step", _TOP.value)))


if __name__ == "__main__":
    app.run(main)
