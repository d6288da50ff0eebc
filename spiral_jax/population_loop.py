"""What the training loop does for a population between steps (`spiral_jax.population`):
per-member metrics, fitness, exploit/explore, and which member paints the pictures.

Fitness (lower is better), as `population.fitness` says or, with "auto":

* ``frechet``: the Fréchet distance of each member's paintings to training digits
  (unconditional digit runs; measured at each exploit step, and at each `eval_every`
  step, where it also picks the best checkpoint);
* ``l2``: the member's training error as a fraction of a blank canvas's
  (``l2_to_target_vs_blank``, on training digits: held-in), averaged over the steps
  since the last exploit (conditional runs);
* ``d_score``: minus D's mean raw score of the member's final canvases over the same
  steps (SPIRAL's fitness; comparable across members when they share D).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax import population as population_lib
from spiral_jax.experiment import ConfigError, Experiment, TrainState

# Training metric averaged between exploit steps for each fitness, and its sign.
_RUNNING = {"l2": ("l2_to_target_vs_blank", 1.0), "d_score": ("d_score_final", -1.0)}


def fitness_kind(exp: Experiment, evaluates: bool) -> str:
    """The fitness a population uses: `population.fitness`, or for "auto" the Fréchet
    distance where the run measures one, held-in L2 for conditional runs, D's score
    otherwise. ConfigError where the named one cannot be measured."""
    kind, config = exp.population.fitness, exp.config
    if kind == "auto":
        return "frechet" if evaluates else "l2" if config.conditional else "d_score"
    if kind == "frechet" and not evaluates:
        raise ConfigError("population.fitness='frechet' needs an unconditional digit run "
                          "with eval_every > 0")
    if kind == "l2" and not config.conditional:
        raise ConfigError("population.fitness='l2' needs a conditional run")
    return kind


def member_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """A population's metrics ([size] each) as scalars: the members' mean under each
    name, and each member's value under ``name/m<i>``."""
    out = {}
    for name, values in jax.device_get(metrics).items():
        values = np.asarray(values, np.float64).reshape(-1)
        out[name] = float(values.mean())
        out.update({f"{name}/m{i}": float(v) for i, v in enumerate(values)})
    return out


class PopulationLoop:
    """Fitness bookkeeping and PBT for `spiral_jax.train._loop`. The fitness lives in
    the state (`TrainState.members["fitness"]`), so checkpoints keep it and
    `spiral_jax.evaluate` paints with the best member."""

    def __init__(self, exp: Experiment, evaluates: bool):
        self.cfg = exp.population
        self.kind = fitness_kind(exp, evaluates)
        self.exploit_explore = population_lib.make_exploit_explore(self.cfg)
        self.place = exp.place  # back onto the train step's shardings
        self.key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 2**31 - 3)
        self._sum: Any = None  # the running fitness metric, summed on device
        self._count = 0

    def member(self, state: TrainState, index: int | None = None) -> TrainState:
        """Member `index`'s state (default: the best), as a single run's."""
        index = best_member(state) if index is None else index
        return population_lib.member(state, index, self.cfg.shared_disc)

    def observe(self, metrics: dict[str, Any]) -> None:
        """Adds a step's metrics to the running fitness (on device: no wait)."""
        if self.kind in _RUNNING:
            value = metrics[_RUNNING[self.kind][0]]
            self._sum = value if self._sum is None else self._sum + value
            self._count += 1

    def is_due(self, step: int) -> bool:
        return bool(self.cfg.exploit_every) and step % self.cfg.exploit_every == 0

    def exploit(self, step: int, state: TrainState) -> tuple[TrainState, dict[str, float]]:
        """Exploit/explore on the fitness in the state (for the running kinds, first
        set from the steps since the last exploit; "frechet" the caller has just
        measured with `with_fitness`); returns the new state and what to log."""
        if self.kind in _RUNNING and self._sum is not None:
            sign = _RUNNING[self.kind][1]
            state = self.place(with_fitness(state, sign * self._sum / self._count))
        self._sum, self._count = None, 0
        fitness = np.asarray(jax.device_get(state.members["fitness"]))
        if not np.all(population_lib.measured(fitness)):
            return state, {}  # not measured yet
        record = {f"fitness/m{i}": float(f) for i, f in enumerate(fitness)}
        state, sources = self.exploit_explore(state, jax.random.fold_in(self.key, step))
        state = self.place(state)
        record.update({f"source/m{i}": float(s)
                       for i, s in enumerate(np.asarray(jax.device_get(sources)))})
        return state, record


def with_fitness(state: TrainState, fitness: Any) -> TrainState:
    """`state` with its members' fitness set ([size], lower is better)."""
    members = dict(state.members)
    members["fitness"] = jnp.asarray(fitness, jnp.float32).reshape(
        members["fitness"].shape)
    return state.replace(members=members)


def best_member(state: TrainState) -> int:
    """The member with the lowest fitness (0 while none is measured)."""
    fitness = np.asarray(jax.device_get(state.members["fitness"]))
    return int(np.argmin(fitness)) if population_lib.measured(fitness).any() else 0


def member_hparams(state: TrainState) -> dict[str, float]:
    """Each member's hyperparameters and fitness (once measured), for the log."""
    return {f"{name}/m{i}": float(v) for name, values in
            jax.device_get(state.members).items() for i, v in enumerate(values)
            if name != "fitness" or v < population_lib.UNMEASURED}
