"""A run's static parts and its state, built from a config.

A config (`experiments/configs/`) is an `ml_collections.ConfigDict` whose sections go
straight into constructors, one to one:

    LibMyPaint(**config.env)                    spiral_jax/envs/libmypaint.py
      or, with environment="scenes",
    Scenes(**config.scene_env)                  spiral_jax/envs/scenes.py
    AgentConfig(**config.agent, ...)            spiral_jax/agent.py
    DiscriminatorConfig(**config.disc, ...)     spiral_jax/discriminator.py
    LearnerConfig(**config.learner)             spiral_jax/policy_learner.py
    DiscLearnerConfig(**config.disc_learner)    spiral_jax/disc_learner.py
    RewardConfig(**config.reward)               spiral_jax/rewards.py
    PopulationConfig(**config.population)       spiral_jax/population.py

(`...`: the top-level `conditional` and `compute_dtype`, which several parts share).
The other top-level fields (environment, batch, data, loop) are read by `build` and
`train`; `spiral_jax.environments` says which environment section counts.
`section_defaults` turns a constructor's defaults into a config section, so every
field a constructor takes can be set from the command line.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from spiral_jax import agent as agent_lib
from spiral_jax import datasets as data_lib
from spiral_jax import (
    device_data,
    disc_learner,
    environments,
    policy_learner,
    rollout,
    xla_cpu,
)
from spiral_jax import discriminator as disc_lib
from spiral_jax import population as population_lib
from spiral_jax import replay as replay_lib
from spiral_jax.rewards import RewardConfig, check_pools
from spiral_jax.sharding import AXIS, MEMBERS, axis_size, make_mesh, member_axis
from spiral_jax.types import Array, check_compute_dtype, is_int

# Top-level fields shared by several constructors, not set in their sections.
SHARED_FIELDS = ("conditional", "dtype")


class ConfigError(ValueError):
    """A config that cannot train; raised before anything compiles."""


def section_defaults(constructor: Callable[..., Any]) -> ml_collections.ConfigDict:
    """A config section holding every keyword `constructor` takes, at its default
    (except `SHARED_FIELDS`, which come from the config's top level)."""
    params = inspect.signature(constructor).parameters.values()
    return ml_collections.ConfigDict(
        {p.name: p.default for p in params if p.name not in SHARED_FIELDS}
    )


def construct(constructor: Callable[..., Any], config: ml_collections.ConfigDict,
              section: str, **shared: Any) -> Any:
    """`constructor(**config[section], **shared)`, with a one-line error naming any
    field the constructor does not take (e.g. in a config.json of an older version)."""
    fields = dict(config[section])
    allowed = [p for p in inspect.signature(constructor).parameters if p not in shared]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ConfigError(
            f"config.{section} has unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
    return constructor(**fields, **shared)


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
    # A population's per member ({name: [size]}): hyperparameters (`population.HPARAMS`)
    # and last measured fitness; None for a single agent, which uses the config's.
    members: Any = None

    @property
    def eval_params(self) -> Any:
        """The policy parameters to sample and evaluate with: the average if kept."""
        return self.policy_params if self.policy_ema is None else self.policy_ema


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """ConfigError for top-level settings that cannot train, before anything compiles
    (each section's constructor checks its own fields)."""
    try:
        check_compute_dtype(config.compute_dtype)
        env_section = environments.section_of(config)
        check_pools(tuple(config.reward.l2_pools), config[env_section].canvas_width)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if env_section == "scene_env":
        for name in ("stroke_penalty", "empty_penalty"):
            if config.reward[name]:
                raise ConfigError(f"reward.{name}={config.reward[name]!r} is for "
                                  f"libmypaint's strokes: set it to 0 for scenes")
    if config.batch_size < 1 or config.batch_size % num_devices:
        raise ConfigError(
            f"batch_size={config.batch_size} must be a positive multiple of the number of "
            f"devices splitting it ({num_devices})"
        )
    if config.reward.kind.startswith("l2") and not config.conditional:
        raise ConfigError(
            f"reward.kind={config.reward.kind!r} needs a target: set conditional=True"
        )
    for name in ("num_train_steps", "log_every", "sample_every", "checkpoint_every",
                 "keep_checkpoints", "max_nonfinite_in_a_row"):
        if not (is_int(config[name]) and config[name] >= 1):
            raise ConfigError(f"{name}={config[name]!r} must be an integer >= 1")
    if not (is_int(config.eval_every) and config.eval_every >= 0):
        raise ConfigError(f"eval_every={config.eval_every} must be >= 0 (0 = no evaluation)")


@dataclasses.dataclass
class Experiment:
    """The static parts of a run: config, environment, networks, learners, data, mesh."""

    config: ml_collections.ConfigDict
    env: environments.Env  # LibMyPaint or Scenes
    agent: agent_lib.SpiralAgent
    disc: disc_lib.Discriminator
    learner: policy_learner.LearnerConfig
    disc_learner: disc_learner.DiscLearnerConfig
    reward: RewardConfig
    data: device_data.DeviceDataset
    mesh: Mesh
    population: population_lib.PopulationConfig = population_lib.PopulationConfig()
    _samplers: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def member_axis(self) -> str | None:
        """The mesh axis a population's members are split over (None: not split)."""
        return member_axis(self.mesh) if self.population.stacked else None

    @property
    def member_shards(self) -> int:
        """Device groups a population's members are split over (1: every device holds
        every member)."""
        return axis_size(self.mesh, self.member_axis)

    @property
    def batch_size(self) -> int:
        """Episodes per train step over all devices."""
        return int(self.config.batch_size)

    def frames_per_step(self) -> int:
        """Environment steps (agent decisions) per train step, over all devices and all
        members of a population."""
        return self.population.size * self.batch_size * (self.env.episode_length - 1)

    def init_state(self, key: Array) -> TrainState:
        """Fresh parameters, optimiser states and an empty replay, placed on the mesh.
        A population's members get their own draws of everything member-specific
        (`population.member_fields`) and of their hyperparameters."""
        pop = self.population
        if not pop.stacked:
            return self.place(self._init_member(key))
        k_members, k_hparams = jax.random.split(jax.random.fold_in(key, 1))
        inits = [self._init_member(k) for k in jax.random.split(k_members, pop.size)]
        fields = population_lib.member_fields(pop.shared_disc)
        stacked = {f: jax.tree.map(lambda *xs: jnp.stack(xs), *[getattr(m, f) for m in inits])
                   for f in fields if f != "members"}
        state = inits[0].replace(**stacked,
                                 members=population_lib.init_members(pop, k_hparams))
        return self.place(state)

    def _init_member(self, key: Array) -> TrainState:
        k_agent, k_disc = jax.random.split(key)
        shape = self.env.observation_shape
        policy_params = agent_lib.init_params(self.agent, k_agent, shape)
        disc_params, spectral = disc_lib.split_variables(
            disc_lib.init_variables(self.disc, k_disc, shape)
        )
        capacity = self.disc_learner.replay_batches * self.batch_size
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            policy_params=policy_params,
            policy_opt_state=policy_learner.make_optimizer(self.learner).init(policy_params),
            disc_params=disc_params,
            disc_spectral=spectral,
            disc_opt_state=disc_learner.make_optimizer(self.disc_learner).init(disc_params),
            replay=replay_lib.init(capacity, shape, conditional=self.config.conditional),
            # A copy: the train step donates the state, and one buffer cannot be
            # donated twice.
            policy_ema=(jax.tree.map(jnp.copy, policy_params)
                        if self.learner.ema_decay > 0 else None),
        )
        return state

    def state_specs(self, state: TrainState) -> TrainState:
        """PartitionSpecs of a state: replicated, but the replay sharded over AXIS (each
        device keeps the canvases it painted) and a population's parameters, optimiser
        states and replay over the member axis (each device group holds its own)."""
        if not self.population.stacked:
            replay = state.replay
            return jax.tree.map(lambda _: P(), state.replace(replay=None)).replace(
                replay=replay.replace(
                    canvases=P(AXIS), targets=None if replay.targets is None else P(AXIS),
                    pointer=P(), count=P(),
                )
            )
        m = self.member_axis
        # The members' hyperparameters and fitness stay on every device (a few floats
        # that every process reads).
        fields = set(population_lib.member_fields(self.population.shared_disc)) - {"members"}
        specs = {f.name: jax.tree.map(lambda _, n=f.name: P(m) if n in fields else P(),
                                      getattr(state, f.name))
                 for f in dataclasses.fields(state)}
        replay = state.replay
        specs["replay"] = replay.replace(
            canvases=P(m, AXIS), targets=None if replay.targets is None else P(m, AXIS),
            pointer=P(m), count=P(m),
        )
        return state.replace(**specs)

    def place(self, state: TrainState) -> TrainState:
        """Puts a (host or device) state on the mesh, as `state_specs` says."""
        shardings = jax.tree.map(
            lambda s: NamedSharding(self.mesh, s), self.state_specs(state),
            is_leaf=lambda x: isinstance(x, P),
        )
        return jax.device_put(state, shardings)

    def sampler(self, batch_size: int, greedy: bool = False) -> Callable[..., Any]:
        """`sample(params, key, targets=None) -> trajectory` of whole episodes, for
        pictures and evaluation (jitted once per batch size; `greedy`: the agent's
        most likely actions)."""
        if (batch_size, greedy) not in self._samplers:
            self._samplers[batch_size, greedy] = rollout.make_episode_rollout(
                self.env, self.agent, batch_size, greedy
            )
        return self._samplers[batch_size, greedy]

    def sample_data(self, keys: Array) -> Array:
        """Training images, one per key (for pictures and fixed conditional targets),
        on every device and process."""
        if "sample_data" not in self._samplers:
            def sample(images: Array, keys: Array) -> Array:
                total = images.shape[0] * jax.lax.axis_size(AXIS)
                idx = jax.vmap(lambda k: jax.random.randint(k, (), 0, total))(keys)
                return device_data.take_sharded(images, idx, AXIS, scatter=False)

            self._samplers["sample_data"] = jax.jit(jax.shard_map(
                sample, mesh=self.mesh, in_specs=(P(AXIS), P()), out_specs=P(),
                check_vma=False,
            ))
        return self._samplers["sample_data"](self.data.images, keys)


def build(
    config: ml_collections.ConfigDict,
    mesh: Mesh | None = None,
    dataset: data_lib.ImageDataset | None = None,
) -> Experiment:
    """Checks the config and builds everything but the state (no compilation).

    `dataset` replaces the config's training images (tests pass a small one).
    """
    try:
        if mesh is None:
            xla_cpu.keep_host_memory()  # before the first computation
            mesh = make_mesh(member_shards=_member_shards(config, jax.device_count()))
        return _build(config, mesh, dataset)
    except ConfigError:
        raise
    except ValueError as e:  # from a constructor's own checks
        raise ConfigError(str(e)) from e


def _member_shards(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """Device groups the config's population splits over (1 for a single agent)."""
    if "population" not in config or config.population.size <= 1:
        return 1
    return construct(population_lib.PopulationConfig, config, "population").shards(
        num_devices)


def _build(config: ml_collections.ConfigDict, mesh: Mesh,
           dataset: data_lib.ImageDataset | None) -> Experiment:
    validate_config(config, axis_size(mesh, AXIS))
    shared = dict(conditional=config.conditional, dtype=config.compute_dtype)
    env = construct(environments.constructor_of(config), config,
                    environments.section_of(config))
    agent = agent_lib.make_agent(
        env.action_spec(), construct(agent_lib.AgentConfig, config, "agent", **shared)
    )
    disc = disc_lib.make_discriminator(
        construct(disc_lib.DiscriminatorConfig, config, "disc", **shared)
    )
    learner = construct(policy_learner.LearnerConfig, config, "learner")
    disc_learner_config = construct(disc_learner.DiscLearnerConfig, config, "disc_learner")
    reward = construct(RewardConfig, config, "reward")
    # Absent in the config.json of runs from before populations: a single agent.
    population = (construct(population_lib.PopulationConfig, config, "population")
                  if "population" in config else population_lib.PopulationConfig())
    shards = axis_size(mesh, MEMBERS)
    if shards > 1 and population.size % shards:
        raise ConfigError(f"population.size={population.size} cannot be split over the "
                          f"mesh's {shards} member shards")
    sharding = NamedSharding(mesh, P(AXIS))
    global_rows = None
    if dataset is None:
        load_args = dict(
            image_size=env.canvas_width, channels=env.channels,
            data_dir=config.data_dir or None, max_examples=config.max_examples or None,
            invert=bool(config.get("invert_images", False)),  # absent in older config.json
        )
        rows = None
        if jax.process_count() > 1:  # each process reads only the rows its devices hold
            global_rows = data_lib.num_examples(config.dataset, "train", **load_args)
            rows = device_data.local_rows(global_rows, sharding)
            print(f"process {jax.process_index()} reads training images {rows[0]}-{rows[1]} "
                  f"of {global_rows}")
        dataset = data_lib.load(config.dataset, "train", rows=rows, **load_args)
    if dataset.image_shape != env.observation_shape:
        raise ValueError(
            f"dataset images {dataset.image_shape} do not match the canvas "
            f"{env.observation_shape}"
        )
    # Each device holds an equal block of the examples (`disc_learner.sample_images`).
    data = device_data.to_device(dataset, sharding, global_rows=global_rows)
    return Experiment(config, env, agent, disc, learner, disc_learner_config, reward, data,
                      mesh, population)
