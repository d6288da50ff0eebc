"""SPIRAL's training step, all on device (the "Anakin" pattern, Hessel et al. 2021).

One jitted `train_step(state, key) -> (state, metrics)`:

1. rolls out whole episodes of the environment and the agent (each device its share of
   the global batch);
2. scores them: the discriminator's score of the final canvas (SPIRAL), its per-step
   differences (SPIRAL++), or the negative L2 distance to the target, plus optional
   stroke and empty-canvas penalties;
3. updates the policy with V-trace actor-critic (IMPALA: policy gradient on
   `pg_advantages`, baseline regression on `vs`, entropy bonus), Adam after
   gradient clipping, optionally several passes over the same rollout;
4. adds the final canvases to a replay on device and updates the discriminator from
   real images against replayed canvases (WGAN-GP or a spectral-norm GAN).

Data parallelism uses `jax.shard_map` over a one-axis `Mesh` ("data"): parameters
and optimiser states are replicated, gradients are averaged with `lax.pmean`, and
the replay is sharded (each device keeps the canvases it painted). All randomness
is drawn per *episode* (and per sample) from keys split over the global batch, so a
step on n devices equals the step on one device with the same global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from spiral_jax import agent as agent_lib
from spiral_jax import datasets as data_lib
from spiral_jax import discriminator as disc_lib
from spiral_jax import replay as replay_lib
from spiral_jax import rewards as rewards_lib
from spiral_jax import rollout as rollout_lib
from spiral_jax import vtrace
from spiral_jax.envs.libmypaint import LAST, LibMyPaint

Array = jax.Array
AXIS = "data"
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue (with the config and the step's key)."""

    step: Array
    policy_params: Any
    policy_opt_state: Any
    disc_params: Any
    disc_spectral: Any  # power-iteration statistics of a spectral-norm D, else None
    disc_opt_state: Any
    replay: replay_lib.Replay
    # Exponential moving average of policy_params (learner.ema_decay > 0), else None.
    policy_ema: Any = None

    @property
    def eval_params(self) -> Any:
        """The policy parameters to sample and evaluate with: the average if kept."""
        return self.policy_params if self.policy_ema is None else self.policy_ema


# ------------------------------------------------------------------------------------
# Building the pieces from a config.


def make_env(config: ml_collections.ConfigDict) -> LibMyPaint:
    e = config.env
    return LibMyPaint(
        episode_length=e.episode_length,
        canvas_width=e.canvas_width,
        grid_width=e.grid_width,
        brush_sizes=tuple(e.brush_sizes),
        use_color=e.use_color,
        use_pressure=e.use_pressure,
        brush_jitter=e.brush_jitter,
        dab_budget=e.dab_budget,
    )


def agent_config(config: ml_collections.ConfigDict) -> agent_lib.AgentConfig:
    a = config.agent
    return agent_lib.AgentConfig(
        channels=a.channels,
        num_res_blocks=a.num_res_blocks,
        lstm_size=a.lstm_size,
        torso_output=a.torso_output,
        noise_dim=0 if config.conditional else a.noise_dim,
        conditional=config.conditional,
        dtype=config.compute_dtype,
    )


def disc_config(config: ml_collections.ConfigDict) -> disc_lib.DiscriminatorConfig:
    d = config.disc
    return disc_lib.DiscriminatorConfig(
        channels=tuple(d.widths),
        spectral_norm=d.loss == "gan",
        conditional=config.conditional,
        dtype=config.compute_dtype,
    )


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ValueError for settings that cannot train, before anything compiles."""
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype={config.compute_dtype!r}; allowed: {tuple(COMPUTE_DTYPES)}"
        )
    if config.disc.loss not in disc_lib.LOSSES:
        raise ValueError(f"disc.loss={config.disc.loss!r}; allowed: {disc_lib.LOSSES}")
    rewards_lib.check_reward(config.reward.kind)
    if config.reward.kind.startswith("l2") and not config.conditional:
        raise ValueError(
            f"reward.kind={config.reward.kind!r} needs a target: set conditional=True"
        )
    if config.batch_size < 1 or config.batch_size % num_devices:
        raise ValueError(
            f"batch_size={config.batch_size} must be a positive multiple of the number of "
            f"devices ({num_devices})"
        )
    for name in ("passes", "max_grad_norm", "learning_rate"):
        if not config.learner[name] > 0:
            raise ValueError(f"learner.{name}={config.learner[name]!r} must be > 0")
    rewards_lib.check_pools(tuple(config.reward.l2_pools), config.env.canvas_width)
    if not config.reward.scale > 0:
        raise ValueError(f"reward.scale={config.reward.scale!r} must be > 0")
    if not 0.0 <= config.reward.discount <= 1.0:
        raise ValueError(f"reward.discount={config.reward.discount!r} must be in [0, 1]")
    if not 0.0 <= ema_decay(config) < 1.0:
        raise ValueError(
            f"learner.ema_decay={ema_decay(config)!r} must be in [0, 1) (0 = no average)"
        )
    if config.disc.updates_per_step < 0 or config.disc.replay_batches < 1:
        raise ValueError(
            f"disc.updates_per_step={config.disc.updates_per_step} must be >= 0 and "
            f"disc.replay_batches={config.disc.replay_batches} >= 1"
        )


def ema_decay(config: ml_collections.ConfigDict) -> float:
    """learner.ema_decay, 0 for runs whose config.json predates it."""
    return float(config.learner.get("ema_decay", 0.0))


def _adam(cfg: ml_collections.ConfigDict, clip: float | None) -> optax.GradientTransformation:
    adam = optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.chain(optax.clip_by_global_norm(clip), adam) if clip else adam


def _cast(tree: Any, dtype: Any) -> Any:
    """A copy of the floating leaves in `dtype` (compute precision; params stay f32)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


@dataclasses.dataclass
class Trainer:
    """The static parts of a run: config, environment, networks, data and mesh."""

    config: ml_collections.ConfigDict
    env: LibMyPaint
    agent: agent_lib.SpiralAgent
    disc: disc_lib.Discriminator
    data: data_lib.DeviceDataset
    mesh: Mesh
    policy_opt: optax.GradientTransformation
    disc_opt: optax.GradientTransformation
    _samplers: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def _max_entropy(self) -> dict[str, float]:
        """log(number of choices) of each action part: its largest possible entropy."""
        return {k: float(np.log(max(n, 2))) for k, n in self.env.action_spec().items()}

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def local_batch(self) -> int:
        return self.config.batch_size // self.num_devices

    @property
    def steps_per_episode(self) -> int:
        return self.env.episode_length - 1

    def frames_per_step(self) -> int:
        """Environment steps (agent decisions) per train step, over all devices."""
        return self.config.batch_size * self.steps_per_episode

    # -- state -------------------------------------------------------------------------

    def _state_specs(self, state: TrainState) -> TrainState:
        replay_spec = self._replay_spec(state.replay)
        rest = jax.tree.map(lambda _: P(), state.replace(replay=None))
        return rest.replace(replay=replay_spec)

    @staticmethod
    def _replay_spec(replay: replay_lib.Replay) -> replay_lib.Replay:
        return replay_lib.Replay(
            canvases=P(AXIS),
            targets=None if replay.targets is None else P(AXIS),
            pointer=P(),
            count=P(),
        )

    def init(self, key: Array) -> TrainState:
        """Fresh parameters, optimiser states and an empty replay, placed on the mesh."""
        k_agent, k_disc = jax.random.split(key)
        shape = self.env.observation_shape
        policy_params = agent_lib.init_params(self.agent, k_agent, shape)
        disc_vars = disc_lib.init_variables(self.disc, k_disc, shape)
        disc_params, spectral = disc_lib.split_variables(disc_vars)
        capacity = self.config.disc.replay_batches * self.config.batch_size
        replay = replay_lib.init(capacity, shape, conditional=self.config.conditional)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            policy_params=policy_params,
            policy_opt_state=self.policy_opt.init(policy_params),
            disc_params=disc_params,
            disc_spectral=spectral,
            disc_opt_state=self.disc_opt.init(disc_params),
            replay=replay,
            # A copy: the train step donates the state, and one buffer cannot be donated
            # twice.
            policy_ema=(jax.tree.map(jnp.copy, policy_params)
                        if ema_decay(self.config) > 0 else None),
        )
        return self.place(state)

    def place(self, state: TrainState) -> TrainState:
        """Puts a (host or device) state on the mesh: replicated, replay sharded."""
        specs = self._state_specs(state)
        shardings = jax.tree.map(
            lambda s: NamedSharding(self.mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
        )
        return jax.device_put(state, shardings)

    # -- the step ------------------------------------------------------------------------

    def make_train_step(self) -> Callable[[TrainState, Array], tuple[TrainState, dict]]:
        """`train_step(state, key) -> (state, metrics)`, jitted and sharded."""
        images = self.data.images

        def step(state: TrainState, key: Array) -> tuple[TrainState, dict]:
            specs = self._state_specs(state)
            sharded = jax.shard_map(
                self._local_step,
                mesh=self.mesh,
                in_specs=(specs, P(), P()),
                out_specs=(specs, P()),
                check_vma=False,
            )
            return sharded(state, images, key)

        return jax.jit(step, donate_argnums=0)

    def _global_keys(self, key: Array, n_global: int) -> Array:
        """This device's slice of `split(key, n_global)`: per-example randomness that
        does not depend on how the global batch is divided over devices."""
        keys = jax.random.split(key, n_global)
        per_device = n_global // self.num_devices
        start = jax.lax.axis_index(AXIS) * per_device
        return jax.lax.dynamic_slice_in_dim(keys, start, per_device)

    @staticmethod
    def _sample_data(images: Array, keys: Array) -> Array:
        """One uniformly drawn image per key, float32 [len(keys), H, W, C]."""
        idx = jax.vmap(lambda k: jax.random.randint(k, (), 0, images.shape[0]))(keys)
        return data_lib.to_float(jnp.take(images, idx, axis=0))

    def sample_data(self, keys: Array) -> Array:
        """Training images, one per key (for pictures and fixed conditional targets)."""
        return _sample_data_jit(self.data.images, keys)

    def _rollout(self, params: Any, keys: Array, targets: Array | None):
        """Whole episodes, one per key; a time-major `Trajectory` [T, b, ...]."""

        def one(key, target):
            t = None if target is None else target[None]
            return rollout_lib.rollout_episodes(self.env, self.agent, params, key, 1, t)

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
        return rollout_lib.Trajectory(**fields)

    def _rewards(self, traj, critic, disc_params, targets):
        cfg = self.config.reward
        is_last = traj.next_step_type == LAST
        # Canvases c_0 (blank) .. c_T (final) of each episode, [T + 1, b, H, W, C].
        canvases = jnp.concatenate([traj.observation["canvas"][:1], traj.next_canvas])

        def d_reward(images):
            scores = disc_lib.score_canvases(critic, disc_params, images, targets)
            scores = disc_lib.generator_reward(scores, self.config.disc.loss)
            if cfg.standardize_d:
                scores = rewards_lib.standardize_scores(scores, AXIS)
            return scores

        if cfg.kind == "terminal_d":
            reward = rewards_lib.terminal_d_reward(d_reward(traj.final_canvas), is_last)
        elif cfg.kind == "per_step_d":
            reward = rewards_lib.per_step_d_reward(d_reward(canvases))
        elif cfg.kind == "l2":
            reward = rewards_lib.l2_reward(
                traj.final_canvas, targets, is_last, tuple(cfg.l2_pools)
            )
        else:  # l2_per_step
            reward = rewards_lib.l2_per_step_reward(
                canvases, targets, pools=tuple(cfg.l2_pools)
            )
        reward = cfg.scale * reward
        if cfg.stroke_penalty:
            prev_flag = traj.observation["action_mask"]["control"]
            reward = reward + rewards_lib.stroke_penalty(
                traj.action["flag"], cfg.stroke_penalty, prev_flag=prev_flag
            )
        if cfg.empty_penalty:
            reward = reward + rewards_lib.empty_canvas_penalty(
                traj.final_canvas, is_last, cfg.empty_penalty
            )
        return jax.lax.stop_gradient(reward)

    def _policy_loss(self, params: Any, traj, rewards: Array):
        cfg = self.config.learner
        dtype = COMPUTE_DTYPES[self.config.compute_dtype]
        params_c = params if dtype == jnp.float32 else _cast(params, dtype)
        out = self.agent.apply(
            params_c, **traj.unroll_inputs(), method=agent_lib.SpiralAgent.unroll
        )
        target_log_prob = out.log_prob.astype(jnp.float32)
        baseline = out.baseline.astype(jnp.float32)
        if cfg.normalize_entropy:
            entropy = sum(
                h.astype(jnp.float32) / self._max_entropy[k] for k, h in out.entropies.items()
            )
        else:
            entropy = out.entropy.astype(jnp.float32)
        log_rhos = jax.lax.stop_gradient(target_log_prob) - traj.behaviour_log_prob
        vt = vtrace.from_importance_weights(
            log_rhos=log_rhos,
            discounts=traj.discount * self.config.reward.discount,
            rewards=rewards,
            values=jax.lax.stop_gradient(baseline),
            bootstrap_value=jnp.zeros_like(baseline[0]),
            clip_rho_threshold=cfg.clip_rho_threshold,
            clip_pg_rho_threshold=cfg.clip_pg_rho_threshold,
            lambda_=cfg.vtrace_lambda,
        )
        pg_loss = -jnp.mean(vt.pg_advantages * target_log_prob)
        baseline_loss = 0.5 * jnp.mean(jnp.square(vt.vs - baseline))
        entropy_mean = jnp.mean(entropy)
        loss = pg_loss + cfg.baseline_cost * baseline_loss - cfg.entropy_cost * entropy_mean
        metrics = {
            "policy_loss": pg_loss,
            "baseline_loss": baseline_loss,
            "entropy": entropy_mean,
            "mean_rho": jnp.mean(jnp.exp(log_rhos)),
            "value": jnp.mean(baseline),
        }
        return loss, metrics

    def _disc_update(self, state: TrainState, images: Array, key: Array, replay):
        cfg = self.config.disc
        critic_for = lambda spectral: disc_lib.critic_fn(self.disc, spectral)  # noqa: E731
        b = self.local_batch
        conditional = self.config.conditional

        def one_update(carry, update_key):
            params, spectral, opt_state = carry
            k_real, k_fake, k_eps = jax.random.split(update_key, 3)
            real = self._sample_data(images, self._global_keys(k_real, self.config.batch_size))
            fake_keys = self._global_keys(k_fake, self.config.batch_size)
            fake, fake_t = _replay_stratified(replay, fake_keys, b)
            eps = jax.vmap(lambda k: jax.random.uniform(k, ()))(
                self._global_keys(k_eps, self.config.batch_size)
            )
            critic = critic_for(spectral)

            def loss_fn(p):
                return disc_lib.discriminator_loss(
                    cfg.loss, critic, p, real, fake, None,
                    fake_target=fake_t if conditional else None,
                    gp_weight=cfg.gp_weight, eps=eps,
                )

            (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            grads = jax.lax.pmean(grads, AXIS)
            updates, opt_state = self.disc_opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if spectral is not None:
                spectral = disc_lib.update_spectral_stats(
                    self.disc, params, spectral, self.env.observation_shape
                )
            return (params, spectral, opt_state), metrics

        carry = (state.disc_params, state.disc_spectral, state.disc_opt_state)
        for update_key in jax.random.split(key, cfg.updates_per_step):  # see policy passes
            carry, metrics = one_update(carry, update_key)
        return carry, metrics

    def _local_step(self, state: TrainState, images: Array, key: Array):
        config = self.config
        k_roll, k_target, k_disc = jax.random.split(jax.random.fold_in(key, 0), 3)
        targets = None
        if config.conditional:
            targets = self._sample_data(images, self._global_keys(k_target, config.batch_size))
        dtype = COMPUTE_DTYPES[config.compute_dtype]
        behaviour_params = state.policy_params
        if dtype != jnp.float32:
            behaviour_params = _cast(behaviour_params, dtype)
        traj = self._rollout(
            behaviour_params, self._global_keys(k_roll, config.batch_size), targets
        )
        critic = disc_lib.critic_fn(self.disc, state.disc_spectral)
        rewards = self._rewards(traj, critic, state.disc_params, targets)

        def policy_pass(carry, _):
            params, opt_state = carry
            (_, metrics), grads = jax.value_and_grad(self._policy_loss, has_aux=True)(
                params, traj, rewards
            )
            grads = jax.lax.pmean(grads, AXIS)
            metrics["policy_grad_norm"] = optax.tree.norm(grads)
            updates, opt_state = self.policy_opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), metrics

        # A Python loop, not lax.scan: XLA's CPU backend runs convolutions (and their
        # gradients) inside a while loop ~25x slower than outside one.
        carry, passes_metrics = (state.policy_params, state.policy_opt_state), []
        for _ in range(config.learner.passes):
            carry, m = policy_pass(carry, None)
            passes_metrics.append(m)
        policy_params, policy_opt_state = carry
        policy_metrics = passes_metrics[0]
        policy_ema = state.policy_ema
        if policy_ema is not None:
            # decay * average + (1 - decay) * params (Polyak averaging).
            policy_ema = optax.incremental_update(
                policy_params, policy_ema, 1.0 - ema_decay(config)
            )

        replay = replay_lib.add(state.replay, traj.final_canvas, targets)
        disc_metrics = {}
        disc_carry = (state.disc_params, state.disc_spectral, state.disc_opt_state)
        if config.disc.updates_per_step:
            disc_carry, disc_metrics = self._disc_update(state, images, k_disc, replay)
        disc_params, disc_spectral, disc_opt_state = disc_carry

        episode_return = jnp.sum(rewards, axis=0)
        metrics = dict(policy_metrics)
        metrics.update(disc_metrics)
        metrics["episode_return"] = jnp.mean(episode_return)
        strokes = jnp.sum(traj.action["flag"] == 1, axis=0).astype(jnp.float32)
        metrics["strokes"] = jnp.mean(strokes)
        metrics["ink"] = jnp.mean(1.0 - traj.final_canvas)
        if targets is not None:
            metrics["l2_to_target"] = jnp.mean(jnp.square(traj.final_canvas - targets))
            metrics["l2_blank"] = jnp.mean(jnp.square(1.0 - targets))
        metrics = jax.lax.pmean(metrics, AXIS)
        if targets is not None:
            # As a fraction of a blank canvas's error on the same targets (1 = no better
            # than painting nothing), the number `experiments.evaluate` reports.
            blank = metrics.pop("l2_blank")
            metrics["l2_to_target_vs_blank"] = metrics["l2_to_target"] / jnp.maximum(blank, 1e-12)
        new_state = state.replace(
            step=state.step + 1,
            policy_params=policy_params,
            policy_opt_state=policy_opt_state,
            disc_params=disc_params,
            disc_spectral=disc_spectral,
            disc_opt_state=disc_opt_state,
            replay=replay,
            policy_ema=policy_ema,
        )
        return new_state, metrics

    # -- sampling for pictures and evaluation ---------------------------------------------

    def make_sampler(self, batch_size: int, greedy: bool = False) -> Callable[..., Any]:
        """`sample(params, key, targets=None) -> trajectory` of whole episodes (jitted
        once per batch size; `greedy`: the agent's most likely actions)."""
        if (batch_size, greedy) not in self._samplers:
            self._samplers[batch_size, greedy] = rollout_lib.make_episode_rollout(
                self.env, self.agent, batch_size, greedy
            )
        return self._samplers[batch_size, greedy]


_sample_data_jit = jax.jit(Trainer._sample_data)


def _replay_stratified(replay: replay_lib.Replay, keys: Array, batch: int):
    """Fake examples for D: example i comes from column i of a random stored batch.

    The replay holds whole batches in order (slot = row * batch + column), so drawing
    a row per column is uniform over the stored batches and needs no data from other
    devices; with per-example keys it does not depend on the device count.
    """
    rows = jnp.maximum(replay.count // batch, 1)
    row = jax.vmap(lambda k: jax.random.randint(k, (), 0, rows))(keys)
    idx = row * batch + jnp.arange(batch)
    return replay_lib.take(replay, idx)


def make_mesh(devices: Any = None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (AXIS,))


def make_trainer(
    config: ml_collections.ConfigDict,
    mesh: Mesh | None = None,
    dataset: data_lib.ImageDataset | None = None,
) -> Trainer:
    """Checks the config and builds everything but the state (no compilation)."""
    mesh = make_mesh() if mesh is None else mesh
    validate_config(config, int(mesh.devices.size))
    env = make_env(config)
    agent = agent_lib.make_agent(env.action_spec(), agent_config(config))
    disc = disc_lib.make_discriminator(disc_config(config))
    if dataset is None:
        dataset = data_lib.load(
            config.dataset,
            "train",
            image_size=config.env.canvas_width,
            channels=env.channels,
            data_dir=config.data_dir or None,
            max_examples=config.max_examples or None,
        )
    if dataset.image_shape != env.observation_shape:
        raise ValueError(
            f"dataset images {dataset.image_shape} do not match the canvas "
            f"{env.observation_shape}"
        )
    data = data_lib.to_device(dataset, NamedSharding(mesh, P()))
    policy_opt = _adam(config.learner, config.learner.max_grad_norm)
    disc_opt = _adam(config.disc, None)
    return Trainer(config, env, agent, disc, data, mesh, policy_opt, disc_opt)
