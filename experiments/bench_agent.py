r"""Speed of SPIRAL's agent: parameters, FLOPs per step, agent + environment steps/s.

    python -m experiments.bench_agent
    python -m experiments.bench_agent --configs=small --batch_sizes=1,16,64,256

For each agent size (`paper`: SPIRAL's network, `AgentConfig()`; `mnist5k`: the agent
of the mnist5k config, SPIRAL's with 16 channels and 2 residual blocks; `small`: the
agent of the small config, 8 channels, 1 residual block, LSTM 32) on SPIRAL's paper
environment (64x64 colour canvas, grid 32, brush sizes 1-24, pressure, 20-step
episodes) it prints:

* the parameter count;
* FLOPs of one agent step (torso, LSTM, sampling all eight heads), from XLA's cost
  analysis of the compiled step at batch 1 and, per step, at each batch size. (XLA
  counts what it runs: the sub-pixel transposed convs do 9/4 of a transposed conv's
  minimal multiply-adds.)
* steps per second (fastest of >= 3 calls after a warm-up call) of
  - the agent alone (`SpiralAgent.step`, jitted, batch B),
  - the environment alone (`jit(scan(vmap(env.step)))`),
  - agent and environment together: `rollout.make_episode_rollout`, whole episodes
    (reset + 19 decisions) of B environments, counting 19 * B steps per call;
  - the learner's re-evaluation: `SpiralAgent.unroll` over those episodes with the
    gradient of a V-trace-like loss (forward + backward), in agent steps ("frames")
    per second, and the FLOP/s that makes (XLA's count of the compiled learner).

Everything is compiled as the train step is (`spiral_jax.xla_cpu.jit`).
`python -m experiments.bench_torch` times the same learner against the same network
in plain PyTorch.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.configs import mnist5k, small
from spiral_jax import agent as agent_lib
from spiral_jax import rollout as rollout_lib
from spiral_jax import xla_cpu
from spiral_jax.envs.libmypaint import LibMyPaint

# The agents timed, by name.
CONFIGS = {
    "paper": agent_lib.AgentConfig(),  # SPIRAL's network
    "mnist5k": agent_lib.AgentConfig(**mnist5k.get_config().agent),  # the offline default's
    "small": agent_lib.AgentConfig(**small.get_config().agent),  # the smoke test's
}

_CONFIGS = flags.DEFINE_list(
    "configs", ["paper", "mnist5k", "small"], f"Agent sizes: {', '.join(CONFIGS)}."
)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "Episodes in parallel.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "Time each measurement at least this.")
_CANVAS = flags.DEFINE_integer("canvas_width", 64, "Canvas width.")
_GRID = flags.DEFINE_integer("grid_width", 32, "Action grid width.")
_EPISODE_LENGTH = flags.DEFINE_integer("episode_length", 20, "Observations per episode.")
_LEARNER = flags.DEFINE_bool("learner", True, "Also time unroll forward + backward.")


def timed(fn: Callable[[], Any], min_seconds: float, min_calls: int = 3) -> float:
    """Seconds of the fastest call of `fn`, after one warm-up call, over at least
    `min_calls` calls and `min_seconds`. The fastest, not the mean: other jobs share
    this machine's cores, and they only ever slow a call down."""
    jax.block_until_ready(fn())
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def flops_of(compiled: Any) -> float:
    """Total FLOPs from XLA's cost analysis (a dict, or a list of dicts on older JAX)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def step_inputs(agent: agent_lib.SpiralAgent, env: LibMyPaint, batch: int) -> tuple:
    obs = agent_lib.dummy_observation(agent, env.observation_shape, batch)
    state = agent_lib.initial_state(agent.action_spec, agent.config, batch)
    dim = agent.config.episode_noise_dim
    noise = jnp.zeros((batch, dim), jnp.float32) if dim else None
    return obs, jnp.zeros((batch,), jnp.int32), state, noise, jax.random.key(1)


def bench_config(name: str, env: LibMyPaint, batches: list[int]) -> list[dict[str, Any]]:
    agent = agent_lib.make_agent(env.action_spec(), CONFIGS[name])
    params = agent_lib.init_params(agent, jax.random.key(0), env.observation_shape)
    count = agent_lib.param_count(params)
    step = xla_cpu.jit(functools.partial(agent.apply, method=agent_lib.SpiralAgent.step))
    flops1 = flops_of(step.lower(params, *step_inputs(agent, env, 1)).compile())
    print(f"\n[{name}] {count:,} parameters; {flops1 / 1e6:.1f} MFLOP per agent step (batch 1)")
    decisions = env.episode_length - 1
    rows = []
    for batch in batches:
        inputs = step_inputs(agent, env, batch)
        compiled = step.lower(params, *inputs).compile()
        flops_b = flops_of(compiled) / batch
        agent_sps = batch / timed(lambda c=compiled, i=inputs: c(params, *i), _MIN_SECONDS.value)

        episodes = rollout_lib.make_episode_rollout(env, agent, batch)
        calls = iter(range(1 << 30))
        both_sps = (
            decisions
            * batch
            / timed(
                lambda e=episodes, c=calls: e(
                    params, jax.random.fold_in(jax.random.key(2), next(c))
                ),
                _MIN_SECONDS.value,
            )
        )

        learner_sps = learner_gflops = float("nan")
        if _LEARNER.value:
            traj = episodes(params, jax.random.key(3))
            seconds = timed(lambda t=traj: learner(agent, params, t), _MIN_SECONDS.value)
            learner_sps = decisions * batch / seconds
            learner_flops = flops_of(jitted_learner().lower(agent, params, traj).compile())
            learner_gflops = learner_flops / seconds / 1e9
        row = dict(
            config=name,
            batch=batch,
            params=count,
            mflop_per_step=flops_b / 1e6,
            agent_sps=agent_sps,
            both_sps=both_sps,
            learner_sps=learner_sps,
            learner_gflops=learner_gflops,
        )
        rows.append(row)
        print(
            f"  batch {batch:>4}: agent {agent_sps:>9,.0f}/s  agent+env {both_sps:>9,.0f}/s  "
            f"learner fwd+bwd {learner_sps:>9,.0f}/s at {learner_gflops:.0f} GFLOP/s  "
            f"({flops_b / 1e6:.1f} MFLOP/step)",
            flush=True,
        )
    return rows


def learner_loss(
    agent: agent_lib.SpiralAgent, params: Any, traj: rollout_lib.Trajectory
) -> tuple[jax.Array, agent_lib.UnrollOutput]:
    """An actor-critic-shaped loss over the trajectory (timing only), and the unroll."""
    out = agent.apply(params, **traj.unroll_inputs(), method=agent_lib.SpiralAgent.unroll)
    adv = jax.lax.stop_gradient(-out.baseline)
    loss = -jnp.mean(out.log_prob * adv) + jnp.mean(out.baseline**2) - 0.01 * jnp.mean(out.entropy)
    return loss, out


def learner_step(agent: agent_lib.SpiralAgent, params: Any, traj: rollout_lib.Trajectory):
    """The gradient of `learner_loss`: the learner's unroll forward and backward (jit it
    with `agent` static, as `learner` does)."""
    return jax.grad(lambda p: learner_loss(agent, p, traj)[0])(params)


@functools.cache
def jitted_learner() -> Callable[..., Any]:
    return xla_cpu.jit(learner_step, static_argnums=0)


def learner(agent: agent_lib.SpiralAgent, params: Any, traj: rollout_lib.Trajectory) -> Any:
    """`learner_step` compiled as spiral-jax compiles its train step."""
    return jitted_learner()(agent, params, traj)


def env_steps_per_second(env: LibMyPaint, batch: int) -> float:
    decisions = env.episode_length - 1
    spec = env.action_spec()
    rng = np.random.default_rng(0)
    actions = {
        k: jnp.asarray(rng.integers(0, n, size=(decisions, batch)), jnp.int32)
        for k, n in spec.items()
    }

    @jax.jit
    def run(key: jax.Array) -> jax.Array:
        state, _ = jax.vmap(env.reset)(jax.random.split(key, batch))

        def body(s: Any, a: Any) -> tuple[Any, None]:
            return jax.vmap(env.step)(s, a)[0], None

        return jax.lax.scan(body, state, actions)[0].canvas

    return decisions * batch / timed(lambda: run(jax.random.key(0)), _MIN_SECONDS.value)


def paper_env() -> LibMyPaint:
    """SPIRAL's paper environment at the sizes of this bench's flags."""
    return LibMyPaint(
        episode_length=_EPISODE_LENGTH.value,
        canvas_width=_CANVAS.value,
        grid_width=_GRID.value,
    )


def conditions(extra: str = "") -> str:
    """One line of what the figures were measured on, with `extra` after the JAX part."""
    device = jax.devices()[0]
    return (
        f"JAX {jax.__version__} on {device.platform} ({device.device_kind}){extra}, "
        f"{os.cpu_count()} CPU cores; canvas {_CANVAS.value}, grid {_GRID.value}, "
        f"{_EPISODE_LENGTH.value - 1} decisions per episode; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )


def main(argv: list[str]) -> None:
    del argv
    env = paper_env()
    print(conditions())
    batches = [int(b) for b in _BATCH_SIZES.value]
    for name in _CONFIGS.value:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; allowed: {sorted(CONFIGS)}")
    env_rows = {b: env_steps_per_second(env, b) for b in batches}
    for b, sps in env_rows.items():
        print(f"  environment alone, batch {b:>4}: {sps:>9,.0f} steps/s", flush=True)
    rows = [r for name in _CONFIGS.value for r in bench_config(name, env, batches)]

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; times are the fastest call")
    print(
        "\n| agent | params | MFLOP/step | batch | agent steps/s | env steps/s "
        "| agent+env steps/s | learner fwd+bwd steps/s | learner GFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['params']:,} | {r['mflop_per_step']:.1f} | {r['batch']} "
            f"| {r['agent_sps']:,.0f} | {env_rows[r['batch']]:,.0f} | {r['both_sps']:,.0f} "
            f"| {r['learner_sps']:,.0f} | {r['learner_gflops']:.0f} |"
        )


if __name__ == "__main__":
    app.run(main)
