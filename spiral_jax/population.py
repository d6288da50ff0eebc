"""A population of agents trained as one program, with population-based training.

SPIRAL (Ganin et al., ICML 2018, Sec. 4) trains 12 members and tunes each one's
learning rate and entropy cost by population-based training (PBT, Jaderberg et al.
2017), with D's score as fitness; SPIRAL++ (Mellor et al. 2019) trains 10 agents that
share one discriminator. Here the members are one program: every member-specific leaf
of the `TrainState` (policy parameters, their average and optimiser state, the replay,
the hyperparameters, and with `shared_disc=False` the discriminator) carries a leading
axis of `size`, and the train step `vmap`s one member's step over it
(`spiral_jax.train_step`); with several devices the members are split over the mesh's
`MEMBERS` axis (`member_shards`), each device group stepping its own. A shared D sees
every member's canvases: each member computes D's gradient on its own fakes and the
gradients are averaged over the members (and their devices), so D takes one step per
update on the population's whole batch.

Every `exploit_every` steps the training loop measures each member's fitness and
`exploit_explore` (jitted) copies the best members over the worst (truncation
selection) and perturbs the copies' hyperparameters (explore).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spiral_jax.types import Array, is_int, is_number

MEMBER = "member"  # the vmapped axis of a population's members
HPARAMS = ("learning_rate", "entropy_cost")  # what each member tunes (SPIRAL's PBT)
FITNESS = ("auto", "frechet", "l2", "d_score")


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """How many agents train together and how PBT tunes them; `config.population`."""

    size: int = 1  # members trained in one jitted step (1 = a single agent, no member axis)
    shared_disc: bool = True  # one D for all members (SPIRAL++) or one each (SPIRAL)
    exploit_every: int = 0  # steps between exploit/explore (0 = never: independent members)
    # Truncation selection: the worst `truncation` of the members (at least one) copy
    # the best as many (Jaderberg et al. 2017 use 20-25 %).
    truncation: float = 0.25
    perturb: float = 1.2  # explore: a copied hyperparameter is multiplied or divided by it
    # Log-uniform ranges of the members' first draws, and the bounds explore keeps them
    # in (SPIRAL++'s: Mellor et al. 2019, App. A).
    learning_rate_range: tuple[float, float] = (1e-5, 3e-4)
    entropy_cost_range: tuple[float, float] = (2e-3, 1e-1)
    # auto: the Fréchet distance to training digits for unconditional digit runs,
    # held-in L2 for conditional ones, D's score of the final canvases otherwise.
    fitness: str = "auto"
    # Device groups the members are split over (each holds size / member_shards of
    # them and splits their batches over its devices); 0 = as many as divide both the
    # size and the device count. Member i draws the same keys wherever it runs.
    member_shards: int = 0

    def __post_init__(self) -> None:
        for name in ("learning_rate_range", "entropy_cost_range"):
            value = getattr(self, name)
            if isinstance(value, list):  # JSON gives lists
                object.__setattr__(self, name, value := tuple(value))
            if (not isinstance(value, tuple) or len(value) != 2
                    or not all(is_number(v) and v > 0 for v in value) or value[0] > value[1]):
                raise ValueError(f"population.{name}={value!r}: must be (low, high) with "
                                 f"0 < low <= high")
        if not is_int(self.size) or self.size < 1:
            raise ValueError(f"population.size={self.size!r}: must be an int >= 1")
        if not is_int(self.exploit_every) or self.exploit_every < 0:
            raise ValueError(f"population.exploit_every={self.exploit_every!r}: must be an "
                             f"int >= 0 (0 = never)")
        if self.exploit_every and self.size < 2:
            raise ValueError(f"population.exploit_every={self.exploit_every} needs "
                             f"population.size >= 2, got {self.size}")
        if not isinstance(self.shared_disc, bool):
            raise ValueError(f"population.shared_disc={self.shared_disc!r}: must be a bool")
        if not is_number(self.truncation) or not 0 < self.truncation <= 0.5:
            raise ValueError(f"population.truncation={self.truncation!r}: must be in (0, 0.5]")
        if not is_number(self.perturb) or not self.perturb >= 1:
            raise ValueError(f"population.perturb={self.perturb!r}: must be >= 1")
        if not is_int(self.member_shards) or self.member_shards < 0:
            raise ValueError(f"population.member_shards={self.member_shards!r}: must be an "
                             f"int >= 0 (0 = as many as divide the size and the devices)")
        if self.member_shards and self.size % self.member_shards:
            raise ValueError(f"population.member_shards={self.member_shards} must divide "
                             f"population.size={self.size}")
        if self.fitness not in FITNESS:
            raise ValueError(f"population.fitness={self.fitness!r}: allowed: {FITNESS}")

    @property
    def stacked(self) -> bool:
        """Whether the state has a member axis (size >= 2)."""
        return self.size > 1

    @property
    def num_replaced(self) -> int:
        """Members replaced at each exploit step."""
        return max(1, math.floor(self.size * self.truncation))

    def shards(self, num_devices: int) -> int:
        """Device groups the members split over, on `num_devices` devices."""
        if not self.member_shards:
            return math.gcd(self.size, num_devices)
        if num_devices % self.member_shards:
            raise ValueError(f"population.member_shards={self.member_shards} must divide "
                             f"the number of devices ({num_devices})")
        return self.member_shards

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {"learning_rate": self.learning_rate_range,
                "entropy_cost": self.entropy_cost_range}


# The fitness of a member not measured yet: the largest float32, finite because a
# checkpoint refuses a state holding an infinity (`spiral_jax.checkpoints.save`), and a
# population is saved before its first exploit step whenever checkpoints come sooner.
UNMEASURED = float(np.finfo(np.float32).max)


def measured(fitness: Any) -> np.ndarray:
    """Which members' fitness has been measured (host-side bools, one per member)."""
    return np.asarray(jax.device_get(fitness)) < UNMEASURED


def init_members(cfg: PopulationConfig, key: Array) -> dict[str, Array]:
    """The `TrainState.members` of a new population: each member's hyperparameters,
    drawn log-uniformly from the config's ranges, and its fitness (lower is better;
    `UNMEASURED` until measured): float32 [size] each."""
    out = {"fitness": jnp.full((cfg.size,), UNMEASURED, jnp.float32)}
    for name, k in zip(HPARAMS, jax.random.split(key, len(HPARAMS)), strict=True):
        low, high = cfg.ranges()[name]
        u = jax.random.uniform(k, (cfg.size,), jnp.float32)
        out[name] = jnp.exp(np.log(low) + u * (np.log(high) - np.log(low)))
    return out


def member_fields(shared_disc: bool) -> tuple[str, ...]:
    """The `TrainState` fields that carry the member axis."""
    fields = ("policy_params", "policy_opt_state", "replay", "policy_ema", "members")
    if not shared_disc:
        fields += ("disc_params", "disc_spectral", "disc_opt_state")
    return fields


def state_axes(state: Any, shared_disc: bool) -> Any:
    """A pytree prefix of `state` for `vmap`'s in_axes / out_axes: 0 on the member
    fields, None (shared) on the others."""
    fields = member_fields(shared_disc)
    return state.replace(**{
        f.name: (0 if f.name in fields else None) for f in dataclasses.fields(state)
    })


def member(state: Any, index: int, shared_disc: bool) -> Any:
    """Member `index`'s own state, without the member axis (as a single run's); on
    every device of the mesh when the population is split over devices, so that any
    process can sample with it."""
    fields = [f for f in member_fields(shared_disc) if f != "members"]
    picked = {f: getattr(state, f) for f in fields}
    sharding = getattr(jax.tree.leaves(picked)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        picked = _take_replicated(sharding.mesh)(picked, jnp.int32(index))
    else:  # host arrays, or one device
        picked = jax.tree.map(lambda x: x[index], picked)
    return state.replace(**picked, members=None)


@functools.cache
def _take_replicated(mesh: Mesh) -> Callable[[Any, Array], Any]:
    """Jitted `tree[index]` for arrays on `mesh`, replicated over it (a member split
    over processes is gathered onto all of them)."""
    return jax.jit(lambda tree, index: jax.tree.map(lambda x: x[index], tree),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


def selection(fitness: Array, num_replaced: int) -> Array:
    """Truncation selection: int32 [size], the member each slot takes its state from.

    The `num_replaced` members with the highest (worst) fitness take the states of the
    `num_replaced` with the lowest, the worst from the best; the rest keep their own.
    Ties break by index (a stable sort), so equal fitness changes nothing.
    """
    order = jnp.argsort(fitness, stable=True)  # best first
    best, worst = order[:num_replaced], order[::-1][:num_replaced]
    return jnp.arange(fitness.shape[0]).at[worst].set(best)


def explore(members: dict[str, Array], replaced: Array, key: Array,
            cfg: PopulationConfig) -> dict[str, Array]:
    """The replaced members' hyperparameters multiplied or divided (with probability
    1/2 each) by `cfg.perturb`, kept within the config's ranges; others unchanged (as
    is every fitness: a copy keeps its source's until it is measured again)."""
    out = dict(members)
    for name, k in zip(HPARAMS, jax.random.split(key, len(HPARAMS)), strict=True):
        low, high = cfg.ranges()[name]
        up = jax.random.bernoulli(k, 0.5, replaced.shape)
        factor = jnp.where(up, cfg.perturb, 1.0 / cfg.perturb)
        perturbed = jnp.clip(members[name] * factor, low, high)
        out[name] = jnp.where(replaced, perturbed, members[name]).astype(members[name].dtype)
    return out


def make_exploit_explore(cfg: PopulationConfig) -> Callable[[Any, Array, Array], tuple[Any, Array]]:
    """`exploit_explore(state, key) -> (state, sources)`, jitted: truncation selection
    on `state.members["fitness"]` [size] (lower is better), each replaced member
    copying its source's whole member state (parameters, average, optimiser state,
    replay, fitness, and its own D when not shared), then explore on the copies'
    hyperparameters. `sources` [size] says whom each member now descends from."""
    fields = member_fields(cfg.shared_disc)

    def exploit_explore(state: Any, key: Array) -> tuple[Any, Array]:
        sources = selection(state.members["fitness"], cfg.num_replaced)
        copied = {f: jax.tree.map(lambda x: x[sources], getattr(state, f)) for f in fields}
        replaced = sources != jnp.arange(cfg.size)
        copied["members"] = explore(copied["members"], replaced, key, cfg)
        return state.replace(**copied), sources

    return jax.jit(exploit_explore, donate_argnums=0)
