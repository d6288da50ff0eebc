r"""python -m experiments.profile_learner --config=paper --batch=16

Where the learner's time goes: per-operation times of `bench_agent.learner_step` (the
agent's unroll forward and backward over whole episodes of SPIRAL's paper
environment), compiled as the train step is, from a `jax.profiler` trace of a few calls.
Each line gives an XLA operation's mean time per call, its share of all traced
operation time, its output shape and the JAX operation it comes from (the HLO's
metadata; kernel-gradient convolutions and layout copies often carry none).

Operations run on two or more threads at once, so the shares are of operation time,
not of wall time (a conditional's or a loop's own event, which covers the operations
inside it, is left out); a CPU's page faults and the runtime's waits are in neither.
XLA's own convolutions do appear (with JAX 0.10.2, the torso's 5x5 conv as
`conv_general_dilated.*` and its kernel gradient as `convolution.*`).
"""

from __future__ import annotations

import jax
from absl import app, flags

from experiments import bench_agent
from experiments.profiling import op_times, top_operations
from spiral_jax import agent as agent_lib
from spiral_jax import rollout as rollout_lib
from spiral_jax.envs.libmypaint import LibMyPaint

_CONFIG = flags.DEFINE_enum("config", "paper", list(bench_agent.CONFIGS), "Agent size.")
_BATCH = flags.DEFINE_integer("batch", 16, "Episodes in the learner's batch.")
_CALLS = flags.DEFINE_integer("calls", 3, "Traced calls (after one untraced).")
_TOP = flags.DEFINE_integer("top", 25, "Operations listed.")


def main(argv: list[str]) -> None:
    del argv
    env = LibMyPaint(episode_length=20, canvas_width=64, grid_width=32)
    agent = agent_lib.make_agent(env.action_spec(), bench_agent.CONFIGS[_CONFIG.value])
    params = agent_lib.init_params(agent, jax.random.key(0), env.observation_shape)
    episodes = rollout_lib.make_episode_rollout(env, agent, _BATCH.value)
    traj = episodes(params, jax.random.key(3))
    call = lambda: jax.block_until_ready(bench_agent.learner(agent, params, traj))  # noqa: E731
    seconds = bench_agent.timed(call, 2.0)
    frames = (env.episode_length - 1) * _BATCH.value
    print(f"[{_CONFIG.value}] batch {_BATCH.value}: {seconds * 1e3:.0f} ms a call, "
          f"{frames / seconds:.1f} frames/s")
    hlo = bench_agent.jitted_learner().lower(agent, params, traj).compile().as_text()

    def run() -> None:
        for _ in range(_CALLS.value):
            call()

    times, sources = op_times(run, hlo)
    total = sum(times.values())
    print(f"traced operation time {total / _CALLS.value / 1e3:.0f} ms a call\n")
    print("\n".join(top_operations(times, sources, _CALLS.value, "call", _TOP.value)))


if __name__ == "__main__":
    app.run(main)
