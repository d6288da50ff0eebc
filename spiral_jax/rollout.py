"""On-device rollouts of SPIRAL's agent in a functional environment (LibMyPaint, Scenes).

One jitted function rolls B environments and the agent forward together: `vmap`
over episodes for the environment, `lax.scan` over time, the agent applied to the
whole batch at once (the "Anakin" pattern of Podracer, Hessel et al. 2021). The
result is a time-major `Trajectory` ready for V-trace (IMPALA, Espeholt et al. 2018).

Time alignment (dm_env convention). Step t of a trajectory is one agent decision:
the agent sees observation o_t (step type `step_type[t]`), takes a_t and reports its
value v(o_t) = `baseline[t]`; the environment then returns o_{t+1}, whose step type
is `next_step_type[t]` and whose discount is `discount[t]`. SPIRAL's reward for
the transition into the final canvas comes from the discriminator, outside the
environment (`next_canvas` / `final_canvas` give what it needs).

Two ways to use it:

* Whole episodes (`make_episode_rollout`): every call resets B environments and
  rolls one complete episode, `episode_length - 1` decisions; the last transition
  ends in the LAST observation (discount 0) and `final_canvas` is the painting D
  judges. This is what SPIRAL's end-of-episode reward needs.
* Continuing unrolls (`init_rollout_state` + `make_rollout`): the environment and
  agent states are carried across calls (IMPALA / Anakin unrolls of length T). The
  environment ignores an action taken at a LAST observation and restarts; that
  dummy transition has `discount` 0 and `valid` 0 and must be left out of the loss.
  `bootstrap_value` is v(o_T), the value of the observation after the last step.

Each episode draws its own noise vector (N(0, 1), `noise_dim`) when it starts, as
SPIRAL's unconditional agents do; conditional agents see a fixed `target` per
environment, which the caller sets in `RolloutState.target` (or passes to the
episode rollout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from spiral_jax import agent as agent_lib
from spiral_jax import xla_cpu
from spiral_jax.agent import AgentState, SpiralAgent
from spiral_jax.types import FIRST, LAST

Array = jax.Array


class RolloutState(struct.PyTreeNode):
    """What a continuing rollout carries between calls; leaves are batch-major [B, ...]."""

    env_state: Any
    timestep: Any  # the latest time step, o_T, not yet acted on
    agent_state: AgentState
    noise: Array  # [B, noise_dim], the current episodes' noise
    target: Array | None = None  # [B, W, W, C] for conditional agents


class Trajectory(struct.PyTreeNode):
    """A time-major rollout, [T, B, ...] unless noted."""

    observation: dict[str, Any]  # o_t: canvas, action_mask, episode_step (+ target)
    step_type: Array  # int32, of o_t
    noise: Array  # [T, B, noise_dim]
    action: dict[str, Array]  # a_t, int32
    behaviour_logits: dict[str, Array]  # [T, B, num_choices]
    action_mask: dict[str, Array]  # which parts of a_t count (from a_t's flag or operation)
    behaviour_log_prob: Array  # sum over parts of the masked log pi(a_t | ...)
    baseline: Array  # v(o_t)
    discount: Array  # of the transition t -> t+1 (0 into LAST and out of LAST)
    next_step_type: Array  # int32, of o_{t+1}
    final_canvas: Array  # [B, W, W, C], canvas of o_T (after the last step)
    bootstrap_value: Array  # [B], v(o_T) (0 when not computed)
    initial_agent_state: AgentState  # [B, ...], the agent state before step 0

    @property
    def valid(self) -> Array:
        """1 for real decisions, 0 for the dummy action taken at a LAST observation."""
        return (self.step_type != LAST).astype(jnp.float32)

    @property
    def next_canvas(self) -> Array:
        """Canvas of o_{t+1}, [T, B, W, W, C]: the canvas each action produced."""
        canvas = self.observation["canvas"]
        return jnp.concatenate([canvas[1:], self.final_canvas[None]], axis=0)

    def unroll_inputs(self) -> dict[str, Any]:
        """Keyword arguments for `SpiralAgent.unroll` to re-evaluate this trajectory."""
        return dict(
            observations=self.observation,
            step_types=self.step_type,
            actions=self.action,
            noise=self.noise,
            state=self.initial_agent_state,
        )


def _check_compatible(env: Any, agent: SpiralAgent) -> None:
    spec = agent_lib.canonical_action_spec(env.action_spec())
    if spec != agent.action_spec:
        raise ValueError(
            f"environment action spec {spec} does not match the agent's {agent.action_spec}"
        )
    if tuple(env.observation_shape)[:2] != (env.observation_shape[0],) * 2:
        raise ValueError(f"canvas must be square, got {env.observation_shape}")


def _check_targets(env: Any, agent: SpiralAgent, targets: Array | None, batch_size: int) -> None:
    if agent.config.conditional:
        want = (batch_size,) + tuple(env.observation_shape)
        if targets is None or tuple(targets.shape) != want:
            got = None if targets is None else tuple(targets.shape)
            raise ValueError(f"a conditional agent needs targets of shape {want}, got {got}")
    elif targets is not None:
        raise ValueError("targets were given but the agent is unconditional")


def init_rollout_state(
    env: Any,
    agent: SpiralAgent,
    key: Array,
    batch_size: int,
    targets: Array | None = None,
) -> RolloutState:
    """Resets `batch_size` environments and zeroes the agent state.

    Each episode's noise is drawn when it starts: here for the first episodes, in
    `rollout` when an environment restarts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_compatible(env, agent)
    _check_targets(env, agent, targets, batch_size)
    env_key, noise_key = jax.random.split(key)
    env_state, timestep = jax.vmap(env.reset)(jax.random.split(env_key, batch_size))
    return RolloutState(
        env_state=env_state,
        timestep=timestep,
        agent_state=agent_lib.initial_state(agent.action_spec, agent.config, batch_size),
        noise=jax.random.normal(
            noise_key, (batch_size, agent.config.episode_noise_dim), jnp.float32
        ),
        target=targets,
    )


def _agent_observation(timestep: Any, target: Array | None) -> dict[str, Any]:
    obs = {
        "canvas": timestep.observation["canvas"],
        "action_mask": dict(timestep.observation["action_mask"]),
        "episode_step": timestep.observation["episode_step"],
    }
    if target is not None:
        obs["target"] = target
    return obs


def _episode_noise(key: Array, step_type: Array, noise: Array) -> Array:
    """A fresh N(0, 1) noise vector for episodes that start now, the old one otherwise."""
    fresh = jax.random.normal(key, noise.shape, jnp.float32)
    return jnp.where((step_type == FIRST)[:, None], fresh, noise)


def rollout(
    env: Any,
    agent: SpiralAgent,
    params: Any,
    state: RolloutState,
    key: Array,
    num_steps: int,
    bootstrap: bool = True,
    greedy: bool = False,
) -> tuple[RolloutState, Trajectory]:
    """Rolls the batch forward `num_steps` agent decisions from `state` (pure; jit it).

    Args:
      env: a functional environment (`reset`, `step`, `action_spec`,
        `observation_shape`), e.g. `spiral_jax.envs.libmypaint.LibMyPaint`.
      agent: the agent module; `params` its parameters.
      state: where the previous call stopped (`init_rollout_state` at the start).
      key: PRNG key for the agent's sampling and the episodes' noise.
      num_steps: T, the trajectory length (static).
      bootstrap: also evaluate v(o_T) (one more agent step); False leaves it 0.
      greedy: the agent takes its most likely actions (`SpiralAgent.step`), for
        evaluation; `behaviour_log_prob` is still that of the taken action.

    Returns:
      (the state to continue from, the trajectory).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    noise_dim = agent.config.episode_noise_dim
    step_keys = jax.random.split(key, num_steps + 1)

    def one_step(carry: RolloutState, step_key: Array) -> tuple[RolloutState, dict[str, Any]]:
        noise_key, act_key = jax.random.split(step_key)
        ts, noise = carry.timestep, carry.noise
        obs = _agent_observation(ts, carry.target)
        out, agent_state = agent.apply(
            params,
            obs,
            ts.step_type,
            carry.agent_state,
            noise if noise_dim else None,
            act_key,
            greedy,
            method=SpiralAgent.step,
        )
        env_state, next_ts = jax.vmap(env.step)(carry.env_state, out.action)
        masks = agent_lib.masks_of(out.action, agent.action_spec)
        log_prob = sum(agent_lib.masked_log_probs(out.logits, out.action, masks).values())
        # The environment ignores an action taken at LAST and restarts: no transition.
        discount = next_ts.discount * (ts.step_type != LAST)
        record = dict(
            observation=obs,
            step_type=ts.step_type,
            noise=noise,
            action=out.action,
            behaviour_logits=out.logits,
            action_mask=masks,
            behaviour_log_prob=log_prob,
            baseline=out.baseline,
            discount=discount.astype(jnp.float32),
            next_step_type=next_ts.step_type,
        )
        new_carry = carry.replace(
            env_state=env_state,
            timestep=next_ts,
            agent_state=agent_state,
            noise=_episode_noise(noise_key, next_ts.step_type, noise),
        )
        return new_carry, record

    final, rec = jax.lax.scan(one_step, state, step_keys[:-1])

    if bootstrap:
        # The same inputs the next call's first step will see, so this equals its
        # baseline[0].
        ts = final.timestep
        out, _ = agent.apply(
            params,
            _agent_observation(ts, final.target),
            ts.step_type,
            final.agent_state,
            final.noise if noise_dim else None,
            step_keys[-1],
            method=SpiralAgent.step,
        )
        bootstrap_value = out.baseline
    else:
        bootstrap_value = jnp.zeros(final.timestep.step_type.shape, jnp.float32)

    traj = Trajectory(
        final_canvas=final.timestep.observation["canvas"],
        bootstrap_value=bootstrap_value,
        initial_agent_state=state.agent_state,
        **rec,
    )
    return final, traj


def make_rollout(
    env: Any, agent: SpiralAgent, num_steps: int, bootstrap: bool = True
) -> Callable[[Any, RolloutState, Array], tuple[RolloutState, Trajectory]]:
    """A jitted `fn(params, state, key) -> (state, trajectory)` of `num_steps` decisions."""
    _check_compatible(env, agent)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")

    def fn(params: Any, state: RolloutState, key: Array) -> tuple[RolloutState, Trajectory]:
        return rollout(env, agent, params, state, key, num_steps, bootstrap)

    return xla_cpu.jit(fn)


def episode_length_of(env: Any) -> int:
    """The environment's episode length (reset + episode_length - 1 steps)."""
    length = getattr(env, "episode_length", None)
    if length is None:
        length = getattr(env, "_episode_length", None)
    if length is None or int(length) < 2:
        raise ValueError(f"environment needs an episode_length >= 2, got {length}")
    return int(length)


def rollout_episodes(
    env: Any,
    agent: SpiralAgent,
    params: Any,
    key: Array,
    batch_size: int,
    targets: Array | None = None,
    greedy: bool = False,
) -> Trajectory:
    """Resets `batch_size` environments and rolls one whole episode each (pure; jit it).

    T = episode_length - 1 decisions: step_type is FIRST at t = 0, next_step_type is
    LAST at t = T - 1 (discount 0 there), and `final_canvas` is the finished painting.
    No bootstrap value is computed (the last transition is terminal).
    """
    reset_key, roll_key = jax.random.split(key)
    state = init_rollout_state(env, agent, reset_key, batch_size, targets)
    _, traj = rollout(
        env, agent, params, state, roll_key, episode_length_of(env) - 1, bootstrap=False,
        greedy=greedy,
    )
    return traj


def rollout_episodes_per_key(
    env: Any, agent: SpiralAgent, params: Any, keys: Array, targets: Array | None = None
) -> Trajectory:
    """One whole episode per key, [T, len(keys), ...] (pure; jit it).

    Each episode's randomness comes from its own key alone, so a batch split over
    devices draws what the whole batch on one device would (`spiral_jax.sharding`).
    """

    def one(key: Array, target: Array | None) -> Trajectory:
        t = None if target is None else target[None]
        return rollout_episodes(env, agent, params, key, 1, t)

    traj = jax.vmap(one)(keys, targets)
    # [b, T, 1, ...] -> [T, b, ...] for time-major fields, [b, 1, ...] -> [b, ...].
    batch_fields = ("final_canvas", "bootstrap_value", "initial_agent_state")
    fields = {}
    for f in dataclasses.fields(traj):
        if f.name in batch_fields:
            fn = lambda x: x[:, 0]  # noqa: E731
        else:
            fn = lambda x: jnp.swapaxes(x[:, :, 0], 0, 1)  # noqa: E731
        fields[f.name] = jax.tree.map(fn, getattr(traj, f.name))
    return Trajectory(**fields)


def make_episode_rollout(
    env: Any, agent: SpiralAgent, batch_size: int, greedy: bool = False
) -> Callable[..., Trajectory]:
    """A jitted `fn(params, key, targets=None) -> trajectory` of whole episodes
    (`greedy`: the agent's most likely actions instead of samples)."""
    _check_compatible(env, agent)
    episode_length_of(env)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def fn(params: Any, key: Array, targets: Array | None = None) -> Trajectory:
        return rollout_episodes(env, agent, params, key, batch_size, targets, greedy)

    return xla_cpu.jit(fn)
