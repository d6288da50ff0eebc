"""The environments a run can use, chosen by `config.environment`, and what differs
between them outside their shared contract.

Both environments have one contract (pure `reset` / `step`, dm_env-style time steps,
`action_spec()`, action masks; `spiral_jax.envs.libmypaint`), so the rollout, the agent
and the learners treat them alike. Each has its own config section, which goes
straight into its constructor:

    environment = "libmypaint" (the default)   LibMyPaint(**config.env)
    environment = "scenes"                     Scenes(**config.scene_env)

Configs written before scenes existed have no `environment` field and mean libmypaint.
What still differs, and lives here: the blank canvas (LibMyPaint's is white, a scene's
is the empty floor), and how an episode is replayed (`play` returns canvases for
LibMyPaint, the scene and canvases for Scenes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from spiral_jax.envs import libmypaint, scenes
from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.envs.scenes import Scenes

Env = LibMyPaint | Scenes

# Environment name -> (its config section, its constructor).
ENVIRONMENTS = {"libmypaint": ("env", LibMyPaint), "scenes": ("scene_env", Scenes)}
DEFAULT = "libmypaint"


def name_of(config: Any) -> str:
    """`config.environment` (libmypaint when absent); ValueError if unknown."""
    name = config.get("environment", DEFAULT)
    if name not in ENVIRONMENTS:
        raise ValueError(f"environment={name!r} is unknown; allowed: {tuple(ENVIRONMENTS)}")
    return name


def section_of(config: Any) -> str:
    """The config section of the run's environment (`env` or `scene_env`); ValueError
    when the config lacks it."""
    section = ENVIRONMENTS[name_of(config)][0]
    if section not in config:
        raise ValueError(f"environment={name_of(config)!r} needs a config.{section} section")
    return section


def constructor_of(config: Any) -> type:
    """The class of the run's environment."""
    return ENVIRONMENTS[name_of(config)][1]


def blank_canvas(env: Env) -> float | np.ndarray:
    """What an episode starts from, as the agent observes it: 1.0 (white) for
    LibMyPaint, the empty floor [W, W, 3] for Scenes. Broadcasts against canvases;
    the error of this canvas is what "painting nothing" scores."""
    return env.blank_canvas() if isinstance(env, Scenes) else 1.0


def final_canvas(env: Env, key: jax.Array, actions: Mapping[str, jax.Array]) -> jax.Array:
    """The observed final canvas of one episode replayed from a reset with `key` and the
    time-major `actions` (name -> [T]). Pure; vmap it over episodes."""
    if isinstance(env, Scenes):
        return scenes.play(env, key, actions)[1][-1]
    return libmypaint.play(env, key, actions)[-1]
