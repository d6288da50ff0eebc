"""SPIRAL's 3D-scene environment: place primitives on a floor, one per step, in pure JAX.

Ganin et al. 2018 (§4.1, §4.6) reconstruct synthetic MuJoCo scenes: at each step the
agent picks an object type (4), a position on a 16x16 grid, a size (3), a colour (3
channels x 4 levels) and an operation (add the object, skip, or modify the last object
added): |A| = 4 * 16^2 * 3 * 4^3 * 3 = 589,824, factorised into discrete parts as
`LibMyPaint`'s action is. The scene is a fixed-size `scene_description.Scene`
(`state.scene`), rendered after every step by `scene_render.render`, the pure-JAX ray
caster that `scene_mjcf` checks against MuJoCo.

The contract is `LibMyPaint`'s (`spiral_jax.envs.libmypaint`), so the rollout, the
agent and the rewards treat both alike:

* `reset(key)` and `step(state, action)` are pure (jit, vmap, lax.scan); time steps are
  dm_env-style (`TimeStep`, FIRST / MID / LAST), reward 0 (rewards are computed by
  `spiral_jax.rewards` from canvases), discount 0 at LAST.
* An episode is `reset` then `episode_length - 1` steps, the last one LAST; stepping a
  LAST state starts a new episode and ignores the action. Default 21: 20 actions, so
  up to 20 objects, as in the paper.
* Observation: `canvas` (float32 [W, W, 3], rounded to 8 bits as LibMyPaint's is),
  `episode_step`, and `action_mask`: which parts of the action that produced it count
  (skip: `operation` only; add, modify: all). The reset's observation carries the skip
  mask, as LibMyPaint's carries the move mask. Like LibMyPaint, the environment does
  not hold the target: a conditional rollout keeps it beside the environment
  (`RolloutState.target`).

Operations: 0 add (into the next free slot; ignored once all `max_objects` slots are
used), 1 skip, 2 modify (overwrite the last object added; ignored while there is none).
Out-of-range action ids are clipped under `jit`; `validate_action` raises on them
eagerly. Impossible settings raise ValueError at construction.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.base import DiscreteActionEnv, TimeStep, observe
from spiral_jax.envs.scene_description import Scene
from spiral_jax.envs.scene_render import render, render_jit
from spiral_jax.types import FIRST, LAST, MID, is_int

ACTION_NAMES = ("operation", "shape", "position", "size", "red", "green", "blue")
OBJECT_PARTS = ACTION_NAMES[1:]
COLOR_ACTIONS = ("red", "green", "blue")
ADD, SKIP, MODIFY = 0, 1, 2
OPERATIONS = ("add", "skip", "modify")
# Parts that count on a skip step; on add and modify all parts count.
SKIP_PARTS = ("operation",)

__all__ = ["ACTION_NAMES", "ADD", "MODIFY", "SKIP", "SceneState", "Scenes", "TimeStep", "play"]


@struct.dataclass
class SceneState:
    """Everything the environment remembers between steps.

    `num_objects` counts the slots used so far (objects added); slot `num_objects - 1`
    is the one `modify` overwrites. `canvas` is the unquantised render of `scene`.
    """

    scene: Scene
    num_objects: jax.Array  # int32
    canvas: jax.Array  # float32 [W, W, 3]
    episode_step: jax.Array  # int32, 0 at reset
    step_type: jax.Array  # int32 step type of the last time step
    key: jax.Array  # PRNG key (kept for the contract; the scene engine draws nothing)


@functools.cache
def _blank_canvas(max_objects: int, width: int, samples: int) -> np.ndarray:
    """The floor alone, as a constant: concrete even when first asked inside a trace."""
    with jax.ensure_compile_time_eval():
        return np.asarray(render_jit(sd.empty_scene(max_objects), width, samples))


def _positive_int(name: str, value: Any) -> int:
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Scenes(DiscreteActionEnv):
    """Primitives on a floor, rendered by the pure-JAX ray caster.

    Args:
      episode_length: time steps including the reset (default 21: 20 actions).
      canvas_width: rendered image side in pixels (paper-like 64).
      max_objects: object slots in the scene (default 20: one per action).
      samples: rays per pixel side (1: one ray through each pixel centre, as MuJoCo's
        reference without multisampling; k: k x k rays averaged, anti-aliased).
    """

    def __init__(
        self,
        episode_length: int = 21,
        canvas_width: int = 64,
        max_objects: int = sd.MAX_OBJECTS,
        samples: int = 1,
    ):
        self.episode_length = _positive_int("episode_length", episode_length)
        if self.episode_length < 2:
            raise ValueError(
                f"episode_length must be at least 2 (a reset and one step), got {episode_length}"
            )
        self.canvas_width = _positive_int("canvas_width", canvas_width)
        self.max_objects = _positive_int("max_objects", max_objects)
        self.samples = _positive_int("samples", samples)
        self.channels = 3
        self._action_spec = OrderedDict(
            operation=len(OPERATIONS),
            shape=len(sd.SHAPES),
            position=sd.GRID_WIDTH**2,
            size=len(sd.SIZE_VALUES),
            red=len(sd.COLOR_LEVELS),
            green=len(sd.COLOR_LEVELS),
            blue=len(sd.COLOR_LEVELS),
        )

    # -- specs -----------------------------------------------------------------------

    @property
    def grid_width(self) -> int:
        """Side of the position grid (`position` has grid_width^2 choices)."""
        return sd.GRID_WIDTH

    def action_mask(self, operation: jax.Array) -> dict[str, jax.Array]:
        """Which parts count after an action with this operation (skip: operation only)."""
        counts = jnp.asarray(operation) != SKIP
        return {
            k: jnp.where(counts | (k in SKIP_PARTS), 1.0, 0.0).astype(jnp.float32)
            for k in self._action_spec
        }

    # -- dynamics --------------------------------------------------------------------

    def render(self, scene: Scene) -> jax.Array:
        """The unquantised canvas of a scene, float32 [W, W, 3]."""
        return render(scene, self.canvas_width, self.samples)

    def blank_canvas(self) -> np.ndarray:
        """The observed canvas of an empty scene (the floor alone, 8-bit), float32
        [W, W, 3]: what "painting nothing" is here, as a white canvas is for LibMyPaint."""
        with jax.ensure_compile_time_eval():
            return np.asarray(observe(jnp.asarray(self._blank)))

    @property
    def _blank(self) -> np.ndarray:
        """The empty scene's canvas (the floor alone), computed once per setting."""
        return _blank_canvas(self.max_objects, self.canvas_width, self.samples)

    def _empty_state(self, key: jax.Array) -> SceneState:
        return SceneState(
            scene=sd.empty_scene(self.max_objects),
            num_objects=jnp.zeros((), jnp.int32),
            canvas=jnp.asarray(self._blank),
            episode_step=jnp.zeros((), jnp.int32),
            step_type=jnp.asarray(FIRST, jnp.int32),
            key=key,
        )

    def reset(self, key: jax.Array) -> tuple[SceneState, TimeStep]:
        """An empty floor; the observation carries the skip mask."""
        state = self._empty_state(key)
        ts = TimeStep(
            step_type=state.step_type,
            reward=jnp.zeros((), jnp.float32),
            discount=jnp.ones((), jnp.float32),
            observation=self._observation(state, jnp.asarray(SKIP, jnp.int32)),
        )
        return state, ts

    def _edit(self, state: SceneState, action: Mapping[str, Any]) -> tuple[Scene, jax.Array]:
        """The scene and object count after the action (without rendering)."""
        op = self._part(action, "operation")
        n = state.num_objects
        add = (op == ADD) & (n < self.max_objects)
        modify = (op == MODIFY) & (n > 0)
        slot = jnp.where(add, n, n - 1)
        write = (jnp.arange(self.max_objects) == slot) & (add | modify)
        color = jnp.stack([self._part(action, k) for k in COLOR_ACTIONS])
        scene = state.scene
        new = Scene(
            shape=jnp.where(write, self._part(action, "shape"), scene.shape),
            position=jnp.where(write, self._part(action, "position"), scene.position),
            size=jnp.where(write, self._part(action, "size"), scene.size),
            color=jnp.where(write[:, None], color, scene.color),
            active=scene.active | write,
        )
        return new, n + add.astype(jnp.int32)

    def step(self, state: SceneState, action: Mapping[str, Any]) -> tuple[SceneState, TimeStep]:
        """Applies one action; after LAST it starts a new episode and ignores the action.

        One render a step: of the edited scene, or none when a new episode starts (its
        canvas is the cached empty floor).
        """
        restart = state.step_type == LAST
        scene, num = self._edit(state, action)
        key = jnp.where(restart, jax.random.fold_in(state.key, 1), state.key)
        fresh = self._empty_state(key)
        scene = jax.tree.map(lambda f, s: jnp.where(restart, f, s), fresh.scene, scene)
        canvas = jnp.where(restart, fresh.canvas, self.render(scene))
        step = jnp.where(restart, 0, state.episode_step + 1).astype(jnp.int32)
        last = step >= self.episode_length - 1
        step_type = jnp.where(restart, FIRST, jnp.where(last, LAST, MID)).astype(jnp.int32)
        new = SceneState(
            scene=scene,
            num_objects=jnp.where(restart, 0, num).astype(jnp.int32),
            canvas=canvas,
            episode_step=step,
            step_type=step_type,
            key=key,
        )
        operation = jnp.where(restart, SKIP, self._part(action, "operation"))
        ts = TimeStep(
            step_type=step_type,
            reward=jnp.zeros((), jnp.float32),
            discount=jnp.where(step_type == LAST, 0.0, 1.0).astype(jnp.float32),
            observation=self._observation(new, operation),
        )
        return new, ts


def play(env: Scenes, key: jax.Array, actions: Mapping[str, jax.Array]) -> tuple[Scene, jax.Array]:
    """Replays one episode: reset, then the time-major actions (name -> [T]).

    Returns the final scene and the observed canvases [T + 1, W, W, 3] (index 0 after
    the reset). Pure; `jax.vmap` it over episodes.
    """
    state, ts = env.reset(key)

    def body(s: SceneState, a: Mapping[str, jax.Array]):
        s, t = env.step(s, a)
        return s, t.observation["canvas"]

    final, canvases = jax.lax.scan(body, state, dict(actions))
    return final.scene, jnp.concatenate([ts.observation["canvas"][None], canvases])
