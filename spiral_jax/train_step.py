"""SPIRAL's training step, all on device (the "Anakin" pattern, Hessel et al. 2021).

One jitted `train_step(state, key) -> (state, metrics)` in four phases:

1. rollout: whole episodes of the environment and the agent, each device its share
   of the global batch;
2. rewards: D's score of the final canvas (SPIRAL), its per-step differences
   (SPIRAL++) or the negative L2 distance to the target, plus penalties;
3. policy update: V-trace actor-critic, `learner.passes` Adam steps on the rollout,
   and the moving average of the parameters;
4. replay and discriminator update: the final canvases join the replay, and D learns
   from real images against replayed canvases.

Data parallelism is `jax.shard_map` over the mesh of `spiral_jax.sharding`. A
population (`spiral_jax.population`) `vmap`s the same step over its members inside
it, each device group over its own share of them; a discriminator the members share
averages its gradients over all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from spiral_jax import (
    action_space,
    complement,
    disc_learner,
    environments,
    gan_losses,
    nonfinite,
    policy_learner,
    rewards,
    xla_cpu,
)
from spiral_jax import discriminator as disc_lib
from spiral_jax import population as population_lib
from spiral_jax import replay as replay_lib
from spiral_jax.experiment import Experiment, TrainState
from spiral_jax.rollout import rollout_episodes_per_key
from spiral_jax.sharding import AXIS, global_keys
from spiral_jax.types import Array, cast_floating

Metrics = dict[str, Array]


def make_train_step(exp: Experiment) -> Callable[[TrainState, Array], tuple[TrainState, Metrics]]:
    """`train_step(state, key) -> (state, metrics)`, jitted and sharded over `exp.mesh`.
    It donates `state`; metrics are averaged over the global batch. `train_step.lower(
    state, key)` lowers it (for XLA's cost analysis)."""
    config, env, agent, disc = exp.config, exp.env, exp.agent, exp.disc
    policy_opt = policy_learner.make_optimizer(exp.learner)
    disc_opt = disc_learner.make_optimizer(exp.disc_learner)
    batch = exp.batch_size
    blank = environments.blank_canvas(env)  # 1.0 (white) or a scene's empty floor
    pop = exp.population
    # A population's members are split over the mesh's member axis (if it has one):
    # each device group vmaps over its own `local` members.
    member_axis = exp.member_axis
    local = pop.size // exp.member_shards
    # The axes D's gradients are averaged over: the devices, and the members sharing it
    # (on this device group and on the others).
    disc_axes: str | tuple[str, ...] = AXIS
    if pop.stacked and pop.shared_disc:
        disc_axes = (AXIS, population_lib.MEMBER)
        if member_axis is not None:
            disc_axes += (member_axis,)

    def local_step(state: TrainState, images: Array, key: Array) -> tuple[TrainState, Metrics]:
        """One agent's step on this device's share of the batch (a population member's,
        under `vmap`, with `state.members` its own scalars)."""
        k_roll, k_target, k_disc = jax.random.split(jax.random.fold_in(key, 0), 3)
        k_masks = jax.random.fold_in(key, 1)  # a complement D's reward masks
        targets = None
        if config.conditional:
            targets = disc_learner.sample_images(images, global_keys(k_target, batch), AXIS)

        # 1. Rollout, with the learner's parameters in the compute dtype.
        behaviour = state.policy_params
        if agent.config.dtype != "float32":
            behaviour = cast_floating(behaviour, jnp.dtype(agent.config.dtype))
        traj = rollout_episodes_per_key(env, agent, behaviour, global_keys(k_roll, batch),
                                        targets)

        # 2. Rewards.
        critic = disc_lib.critic_fn(disc, state.disc_spectral)
        masks = None
        if disc.config.complement:
            # One half-image mask per episode, the same for all its canvases, so that
            # per-step rewards still telescope (SPIRAL++'s complement D).
            masks = complement.sample_masks(global_keys(k_masks, batch), *env.observation_shape[:2])

        def d_score_raw(canvases: Array) -> Array:
            """D's scores of canvases [..., B, H, W, C] painted for this batch's targets."""
            if masks is None:
                return disc_lib.score_canvases(critic, state.disc_params, canvases, targets)
            halves, complements = complement.pairs(canvases, targets, masks)
            return disc_lib.score_canvases(critic, state.disc_params, halves, complements)

        def d_score(canvases: Array) -> Array:
            scores = d_score_raw(canvases)
            scores = gan_losses.generator_reward(scores, exp.disc_learner.loss,
                                                 exp.reward.gan_reward)
            if exp.reward.standardize_d:
                scores = rewards.standardize_scores(scores, AXIS)
            return scores

        reward = rewards.episode_rewards(exp.reward, traj, targets, d_score)

        # 3. Policy update, then the parameters' moving average.
        policy_params, policy_opt_state, metrics = policy_learner.update(
            state.policy_params, state.policy_opt_state, agent, exp.learner, policy_opt,
            traj, reward, exp.reward.discount, state.members,
        )
        policy_ema = state.policy_ema
        if policy_ema is not None:
            # decay * average + (1 - decay) * params (Polyak averaging); a step whose
            # update was skipped (non-finite gradients) leaves the average too.
            policy_ema = nonfinite.unchanged_if_skipped(
                optax.incremental_update(policy_params, policy_ema,
                                         1.0 - exp.learner.ema_decay),
                policy_ema, state.policy_opt_state, policy_opt_state,
            )

        # 4. Replay and discriminator update.
        replay = replay_lib.add(state.replay, traj.final_canvas, targets)
        disc_state = (state.disc_params, state.disc_spectral, state.disc_opt_state)
        if exp.disc_learner.updates_per_step:
            disc_state, disc_metrics = disc_learner.update(
                *disc_state, disc, exp.disc_learner, disc_opt, images, replay, k_disc, batch,
                axis_name=disc_axes,
            )
            metrics.update(disc_metrics)
        if pop.stacked:
            # D's raw score of the final canvases: a population's fitness when nothing
            # better is known (`population.fitness`); comparable across members only
            # when they share D.
            metrics["d_score_final"] = jnp.mean(d_score_raw(traj.final_canvas))

        metrics.update(_episode_metrics(traj, reward, targets, agent.action_spec, blank))
        metrics = _global_mean(metrics)
        metrics.update(_skipped_updates(policy_opt_state, disc_state[2]))
        new_state = state.replace(
            step=state.step + 1,
            policy_params=policy_params,
            policy_opt_state=policy_opt_state,
            disc_params=disc_state[0],
            disc_spectral=disc_state[1],
            disc_opt_state=disc_state[2],
            replay=replay,
            policy_ema=policy_ema,
        )
        return new_state, metrics

    def population_step(state: TrainState, images: Array, key: Array
                        ) -> tuple[TrainState, Metrics]:
        """`local_step` vmapped over this device group's members: member i (its index
        in the whole population) draws from fold_in(key, i). Metrics get a leading
        member axis."""
        axes = population_lib.state_axes(state, pop.shared_disc)
        members = state.members  # every member's hyperparameters, on every device
        first = 0
        if member_axis is not None:  # this device group's members
            first = jax.lax.axis_index(member_axis) * local
            state = state.replace(members=jax.tree.map(
                lambda x: jax.lax.dynamic_slice_in_dim(x, first, local), members))

        def member_step(member: TrainState, index: Array) -> tuple[TrainState, Metrics]:
            return local_step(member, images, jax.random.fold_in(key, index))

        state, metrics = jax.vmap(member_step, in_axes=(axes, 0), out_axes=(axes, 0),
                                  axis_name=population_lib.MEMBER)(state, first + jnp.arange(local))
        if member_axis is not None:  # every member's metrics on every device
            metrics = jax.lax.all_gather(metrics, member_axis, tiled=True)
        return state.replace(members=members), metrics

    def train_step(state: TrainState, images: Array, key: Array
                   ) -> tuple[TrainState, Metrics]:
        specs = exp.state_specs(state)
        sharded = jax.shard_map(
            population_step if pop.stacked else local_step,
            mesh=exp.mesh, in_specs=(specs, P(AXIS), P()),
            out_specs=(specs, P()),
            check_vma=False,
        )
        return sharded(state, images, key)

    # The images are an argument, not a constant: with several processes, no process
    # holds all of them.
    jitted = xla_cpu.jit(train_step, donate_argnums=0)

    def step(state: TrainState, key: Array) -> tuple[TrainState, Metrics]:
        return jitted(state, exp.data.images, key)

    step.lower = lambda state, key: jitted.lower(state, exp.data.images, key)  # cost analysis
    return step


def _episode_metrics(traj, reward: Array, targets: Array | None,
                     action_spec: action_space.ActionSpec, blank: float | Array) -> Metrics:
    """This device's means of what the episodes earned and painted: `strokes` counts
    the steps that draw (scenes: adds and modifies), `ink` how far the final canvas is
    from the blank one (LibMyPaint: 1 - canvas; scenes: the absolute difference)."""
    draws = action_space.changes_picture(traj.action, action_spec)
    if isinstance(blank, float):
        ink = jnp.mean(blank - traj.final_canvas)
    else:
        ink = jnp.mean(jnp.abs(traj.final_canvas - blank))
    metrics = {
        "episode_return": jnp.mean(jnp.sum(reward, axis=0)),
        "strokes": jnp.mean(jnp.sum(draws, axis=0).astype(jnp.float32)),
        "ink": ink,
    }
    if targets is not None:
        metrics["l2_to_target"] = jnp.mean(jnp.square(traj.final_canvas - targets))
        metrics["l2_blank"] = jnp.mean(jnp.square(blank - targets))
    return metrics


def _skipped_updates(policy_opt_state, disc_opt_state) -> Metrics:
    """Updates skipped for non-finite gradients (the same on every device, as the
    gradients are averaged before the check): in total, and the longest current run of
    them in a row, which the loop stops on (`config.max_nonfinite_in_a_row`)."""
    policy_row, policy_total = nonfinite.counts(policy_opt_state)
    disc_row, disc_total = nonfinite.counts(disc_opt_state)
    return {
        "skipped_policy_updates": policy_total,
        "skipped_disc_updates": disc_total,
        "skipped_in_a_row": jnp.maximum(policy_row, disc_row),
    }


def _global_mean(metrics: Metrics) -> Metrics:
    """Means over the mesh; the conditional error also as a fraction of a blank
    canvas's (a scene's: the empty floor's) on the same targets (1 = no better than
    painting nothing), the number `spiral_jax.evaluate` reports."""
    metrics = jax.lax.pmean(metrics, AXIS)
    if "l2_blank" in metrics:
        blank = metrics.pop("l2_blank")
        metrics["l2_to_target_vs_blank"] = metrics["l2_to_target"] / jnp.maximum(blank, 1e-12)
    return metrics
