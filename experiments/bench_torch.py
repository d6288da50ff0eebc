r"""python -m experiments.bench_torch --batch_sizes=16,64 --configs=paper,mnist5k

The JAX learner's speed as a ratio to plain PyTorch's, measured in one process.

    python -m experiments.bench_torch --check --nobench --configs=paper
    python -m experiments.bench_torch --compile --batch_sizes=16 --configs=paper

For each agent size (`CONFIGS` of `experiments.bench_agent`) and batch it rolls whole
episodes of SPIRAL's paper environment with the JAX agent and times the learner's
forward + backward pass over that trajectory:

* JAX: `experiments.bench_agent.learner_step` (`SpiralAgent.unroll` + the gradient of
  an actor-critic-shaped loss), compiled exactly as `bench_agent` times it
  (`bench_agent.learner`);
* PyTorch eager: `experiments.torch_agent.TorchAgent` with the same weights, the same
  loss, `loss.backward()` over the same trajectory (as NCHW tensors, converted once),
  gradients set to None before each call;
* with --compile, the same loss through `torch.compile` (compilation happens in the
  warm-up call, which is not timed).

Each time is the fastest call of >= 3 after one warm-up call, over at least
--min_seconds (`bench_agent.timed`); with --rounds=N the learners are timed in turn N
times and each keeps its fastest. A call re-evaluates (episode_length - 1) * batch
agent decisions ("frames"); the table gives frames per second and JAX / PyTorch.
Torch uses os.cpu_count() threads (--torch_threads); XLA its default (all cores).
After timing, one more call of each gives its minor page faults and system CPU time:
both learners map their large buffers afresh on every call, and how much that costs
depends on the machine's allocator settings (docs/speed.md, page faults).

--check first builds both agents with the same weights on a 2-episode trajectory and
prints the largest differences of logits, baselines, loss and every parameter
gradient (`torch_agent.check_against_jax`); it stops if any exceeds
--check_tolerance relative to the JAX value. It also prints each side's float32 error
against the torch network computed in float64, which tells whose rounding a
difference is. The flags --configs, --batch_sizes,
--min_seconds, --canvas_width, --grid_width and --episode_length are bench_agent's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import app, flags

try:
    import torch
except ImportError:
    sys.exit(
        "experiments.bench_torch needs PyTorch: pip install torch (the CPU-only wheel is enough)"
    )

from experiments import bench_agent
from experiments import torch_agent as torch_lib
from experiments.bench_agent import CONFIGS, learner, timed
from experiments.profiling import call_cost
from spiral_jax import agent as agent_lib
from spiral_jax import rollout as rollout_lib
from spiral_jax.envs.libmypaint import LibMyPaint

FLAGS = flags.FLAGS
# bench_agent's flags, with the defaults this comparison is usually run with.
FLAGS.set_default("configs", ["paper", "mnist5k"])
FLAGS.set_default("batch_sizes", ["16", "64"])

_COMPILE = flags.DEFINE_bool("compile", False, "Also time the torch.compile'd learner.")
_CHECK = flags.DEFINE_bool("check", False, "First check torch against JAX on each config.")
_CHECK_TOLERANCE = flags.DEFINE_float(
    "check_tolerance",
    2e-3,
    "Largest relative difference --check accepts. XLA's CPU convolutions leave the "
    "smallest gradients (|g| ~ 3e-6) up to 1.7e-3 from float64 (docs/speed.md); a wrong "
    "weight mapping is off by O(1).",
)
_BENCH = flags.DEFINE_bool("bench", True, "Time the learners (--nobench: only --check).")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Time the learners in turn this many times; each keeps its fastest call."
)
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads; 0 = os.cpu_count()."
)


def torch_learner(
    agent: torch_lib.TorchAgent,
    inputs: Mapping[str, Any],
    loss_fn: Callable[[torch_lib.TorchAgent, Mapping[str, Any]], torch.Tensor],
) -> Callable[[], None]:
    """One learner call: gradients to None, loss, backward."""

    def step() -> None:
        agent.zero_grad(set_to_none=True)
        loss_fn(agent, inputs).backward()

    return step


def check(env: LibMyPaint, names: list[str]) -> None:
    """Prints `check_against_jax` for each config; exits if one is out of tolerance."""
    worst = 0.0
    for name in names:
        report = torch_lib.check_against_jax(
            CONFIGS[name],
            batch=2,
            time=env.episode_length - 1,
            canvas_width=FLAGS.canvas_width,
            grid_width=FLAGS.grid_width,
        )
        print(f"\n[{name}] torch vs JAX, 2 episodes x {env.episode_length - 1} decisions:")
        print("\n".join(torch_lib.summarize(report)), flush=True)
        worst = max(worst, torch_lib.max_relative(report))
    verdict = "ok" if worst <= _CHECK_TOLERANCE.value else "FAILED"
    print(
        f"\ncheck: largest relative difference torch vs JAX {worst:.1e} "
        f"(tolerance {_CHECK_TOLERANCE.value:g}): {verdict}"
    )
    if verdict != "ok":
        print(
            "  (the float64 lines above give each side's float32 error against the torch "
            "network computed in float64)"
        )
        sys.exit(1)


def bench_config(name: str, env: LibMyPaint, batches: list[int]) -> list[dict[str, Any]]:
    """Learner frames/s of JAX and torch for one agent size at each batch size."""
    agent = agent_lib.make_agent(env.action_spec(), CONFIGS[name])
    params = agent_lib.init_params(agent, jax.random.key(0), env.observation_shape)
    t_agent = torch_lib.TorchAgent(env.action_spec(), CONFIGS[name], env.observation_shape)
    torch_lib.load_flax_params(t_agent, params)
    print(f"\n[{name}] {agent_lib.param_count(params):,} parameters", flush=True)
    decisions = env.episode_length - 1
    min_s = FLAGS.min_seconds
    rows = []
    for batch in batches:
        traj = rollout_lib.make_episode_rollout(env, agent, batch)(params, jax.random.key(3))
        inputs = torch_lib.torch_inputs(traj.unroll_inputs())
        learners: dict[str, Callable[[], Any]] = dict(
            jax=lambda t=traj: learner(agent, params, t),
            eager=torch_learner(t_agent, inputs, torch_lib.learner_loss),
        )
        if _COMPILE.value:
            compiled = torch.compile(torch_lib.learner_loss, dynamic=False)
            learners["compiled"] = torch_learner(t_agent, inputs, compiled)
        # Rounds alternate the learners, so that a burst of load from other jobs is
        # less likely to fall on one of them only; each keeps its fastest call.
        seconds = {k: float("inf") for k in learners}
        for _ in range(_ROUNDS.value):
            for k, fn in learners.items():
                seconds[k] = min(seconds[k], timed(fn, min_s))
        costs = {k: call_cost(fn) for k, fn in learners.items()}
        frames = decisions * batch
        jax_fps, eager_fps = frames / seconds["jax"], frames / seconds["eager"]
        compiled_fps = frames / seconds["compiled"] if _COMPILE.value else float("nan")
        row = dict(config=name, batch=batch, jax=jax_fps, eager=eager_fps, compiled=compiled_fps)
        rows.append(row)
        print(
            f"  batch {batch:>4}: JAX {jax_fps:>8,.0f} frames/s  torch eager "
            f"{eager_fps:>8,.0f}/s"
            + (f"  torch.compile {compiled_fps:>8,.0f}/s" if _COMPILE.value else ""),
            flush=True,
        )
        print("             page faults, system CPU s a call: " + ", ".join(
            f"{k} {faults:,} {system:.2f}" for k, (faults, system) in costs.items()),
            flush=True)
    return rows


def main(argv: list[str]) -> None:
    del argv
    for name in FLAGS.configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; allowed: {sorted(CONFIGS)}")
    torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count() or 1)
    env = bench_agent.paper_env()
    print(
        bench_agent.conditions(
            f", PyTorch {torch.__version__} with {torch.get_num_threads()} threads "
            f"(niceness {os.nice(0)})"
        ),
        flush=True,
    )
    if _CHECK.value:
        check(env, FLAGS.configs)
    if not _BENCH.value:
        return
    batches = [int(b) for b in FLAGS.batch_sizes]
    rows = [r for name in FLAGS.configs for r in bench_config(name, env, batches)]

    print(
        f"\nload average {os.getloadavg()[0]:.1f} at the end; times are the fastest call; "
        f"frames = {FLAGS.episode_length - 1} decisions x batch"
    )
    header = "| agent | batch | JAX learner frames/s | torch eager frames/s | JAX / torch eager |"
    rule = "|---|---|---|---|---|"
    if _COMPILE.value:
        header += " torch.compile frames/s | JAX / torch.compile |"
        rule += "---|---|"
    print("\n" + header + "\n" + rule)
    for r in rows:
        line = (
            f"| {r['config']} | {r['batch']} | {r['jax']:,.0f} | {r['eager']:,.0f} "
            f"| {r['jax'] / r['eager']:.2f} |"
        )
        if _COMPILE.value:
            line += f" {r['compiled']:,.0f} | {r['jax'] / r['compiled']:.2f} |"
        print(line)


if __name__ == "__main__":
    app.run(main)
