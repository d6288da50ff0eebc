"""What the environments share: dm_env-style time steps and a discrete dict action.

`LibMyPaint` (`envs/libmypaint.py`) and `Scenes` (`envs/scenes.py`) both take an action
as a dict of int parts named by `action_spec()` and observe an 8-bit canvas with the
mask of the action that produced it. `DiscreteActionEnv` holds what follows from that
alone (the spec, checking an action, reading a part as `step` does, the observation);
each environment keeps its own dynamics and its own `action_mask`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spiral_jax.types import FIRST, LAST, MID


@struct.dataclass
class TimeStep:
    """dm_env-style time step. `step_type`: 0 FIRST, 1 MID, 2 LAST."""

    step_type: jax.Array
    reward: jax.Array
    discount: jax.Array
    observation: dict[str, Any]

    def first(self) -> jax.Array:
        return self.step_type == FIRST

    def mid(self) -> jax.Array:
        return self.step_type == MID

    def last(self) -> jax.Array:
        return self.step_type == LAST


def observe(canvas: jax.Array) -> jax.Array:
    """The canvas as the agent sees it: rounded to 8-bit levels, as SPIRAL reads it."""
    return jnp.round(canvas * 255.0) / 255.0


class DiscreteActionEnv:
    """The part of an environment that follows from its dict action of discrete parts.

    Subclasses set `_action_spec` (part name -> number of choices), `canvas_width` and
    `channels`, and define `action_mask(gate)`: which parts count after an action whose
    gate part (LibMyPaint's `flag`, a scene's `operation`) has this value.
    """

    _action_spec: OrderedDict[str, int]
    canvas_width: int
    channels: int

    def action_mask(self, gate: jax.Array) -> dict[str, jax.Array]:
        raise NotImplementedError

    def action_spec(self) -> OrderedDict[str, int]:
        """Action part name -> number of choices."""
        return OrderedDict(self._action_spec)

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return (self.canvas_width, self.canvas_width, self.channels)

    def validate_action(self, action: Mapping[str, Any]) -> None:
        """Raises ValueError for missing, unknown or out-of-range parts (eager only)."""
        unknown = sorted(set(action) - set(self._action_spec))
        if unknown:
            raise ValueError(f"unknown action parts {unknown}; allowed: {list(self._action_spec)}")
        missing = [k for k in self._action_spec if k not in action]
        if missing:
            raise ValueError(f"action is missing parts {missing}")
        for k, n in self._action_spec.items():
            v = np.asarray(action[k])
            if not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"action[{k!r}] must be an integer, got {v.dtype} {v!r}")
            if np.any(v < 0) or np.any(v >= n):
                raise ValueError(f"action[{k!r}] = {v.tolist()} is out of range [0, {n - 1}]")

    def _part(self, action: Mapping[str, Any], name: str) -> jax.Array:
        """Part `name` of `action` as `step` reads it: int32, clipped into range (under
        `jit` an out-of-range id cannot raise)."""
        n = self._action_spec[name]
        return jnp.clip(jnp.asarray(action[name], jnp.int32), 0, n - 1)

    def _observation(self, state: Any, gate: jax.Array) -> dict[str, Any]:
        """The observation of `state` (its `canvas` and `episode_step`) after an action
        whose gate part is `gate`."""
        return {
            "canvas": observe(state.canvas),
            "episode_step": state.episode_step,
            "action_mask": self.action_mask(gate),
        }
