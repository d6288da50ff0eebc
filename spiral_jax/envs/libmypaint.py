"""SPIRAL's libmypaint painting environment as a pure-JAX function pair.

The semantics follow deepmind/spiral's `spiral/environments/libmypaint.py`; the brush is
the `dry_brush` model of :mod:`spiral_jax.envs.dry_brush`. `reset` and `step` are pure
functions of an :class:`EnvState`, so `jit`, `vmap` and `lax.scan` apply to both.

Action parts, all discrete, in SPIRAL's spec order:

* `control`, `end`: grid cells, flat index `gy * grid_width + gx`, at canvas coordinate
  `canvas_width * g / grid_width` (cell corners).
* `flag`: 0 moves the pen to `end`, 1 paints a quadratic Bézier from the pen through
  the control point to `end`.
* `pressure` (if `use_pressure`): `linspace(0.1, 1, 10)`; blended linearly from the
  previous stroke's pressure to this one along the stroke when the pen was down.
* `size` (if more than one brush size): index into `brush_sizes` (radii in pixels).
* `red`, `green`, `blue` (if `use_color`): `linspace(0, 1, 20)` each.

Episodes are `reset` then `episode_length - 1` steps, the last of them LAST. Stepping a
LAST state starts a new episode, ignoring the action, as SPIRAL does. The first
observation carries the *move* mask (SPIRAL does, and its agents rely on it);
`episode_step` counts plainly (0 at reset). SPIRAL records the pen at (y, y) after a move;
this records the intended (y, x).

Out-of-range action ids: under `jit` they are clipped into range (e.g. `flag=5` paints,
`end=-1` is cell 0). :meth:`LibMyPaint.validate_action` raises on them eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spiral_jax.envs import dry_brush
from spiral_jax.envs.base import DiscreteActionEnv, TimeStep  # noqa: F401  (TimeStep: public here)
from spiral_jax.types import FIRST, LAST, MID  # noqa: F401  (the env's time steps)

ACTION_NAMES = ("control", "end", "flag", "pressure", "size", "red", "green", "blue")
LOCATION_ACTIONS = ("control", "end")
COLOR_ACTIONS = ("red", "green", "blue")
PRESSURE_VALUES = np.linspace(0.1, 1.0, 10)
COLOR_VALUES = np.linspace(0.0, 1.0, 20)
# Parts that count on a move step; on a paint step all parts count.
MOVE_PARTS = ("end", "flag")


@struct.dataclass
class EnvState:
    """Everything the environment remembers between steps.

    `pen` is SPIRAL's record of the pen (x, y) that the next Bézier starts from; `brush`
    is libmypaint's tracked brush position, which lags the pen slightly (slow tracking).
    """

    canvas: jax.Array  # float32 [W, W, C], unquantised
    pen: jax.Array  # float32 [2] (x, y) in pixels
    pressure: jax.Array  # pressure of the last stroke (start of the next blend)
    is_painting: jax.Array  # bool: the pen is down (last step painted)
    brush: jax.Array  # float32 [2] (x, y), libmypaint's tracked position
    speed_slow: jax.Array  # libmypaint's speed2 filter state, pixels per second
    dab_phase: jax.Array  # fraction of a dab carried to the next stroke
    episode_step: jax.Array  # int32, 0 at reset
    step_type: jax.Array  # int32 step type of the last time step
    key: jax.Array  # PRNG key for the brush's jitter


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class LibMyPaint(DiscreteActionEnv):
    """SPIRAL's libmypaint environment with the `classic/dry_brush` brush, in JAX.

    Args:
      episode_length: steps per episode including the reset (SPIRAL: 20).
      canvas_width: canvas side in pixels.
      grid_width: side of the grid that `control` and `end` index.
      brush_sizes: brush radii in pixels; `size` picks one (dropped if only one).
      use_color: RGB colour actions and a 3-channel canvas; else black ink, 1 channel.
      use_pressure: pressure action; else pressure is 1.
      brush_jitter: the brush's random dab offsets and radius noise (libmypaint's
        dry_brush has them); False renders the deterministic part of the brush.
      dab_budget: virtual dabs per stroke (see :mod:`spiral_jax.envs.dry_brush`);
        more is closer to libmypaint for small brushes and slower.
    """

    def __init__(
        self,
        episode_length: int = 20,
        canvas_width: int = 64,
        grid_width: int = 32,
        brush_sizes: Sequence[float] = (1, 2, 4, 8, 12, 24),
        use_color: bool = True,
        use_pressure: bool = True,
        brush_jitter: bool = True,
        dab_budget: int = 64,
    ):
        self.episode_length = _positive_int("episode_length", episode_length)
        if self.episode_length < 2:
            raise ValueError(
                f"episode_length must be at least 2 (a reset and one step), got {episode_length}"
            )
        self.canvas_width = _positive_int("canvas_width", canvas_width)
        self.grid_width = _positive_int("grid_width", grid_width)
        if self.grid_width > self.canvas_width:
            raise ValueError(
                f"grid_width ({grid_width}) must not exceed canvas_width ({canvas_width})"
            )
        self.dab_budget = _positive_int("dab_budget", dab_budget)
        if isinstance(brush_sizes, (int, float)):
            raise ValueError(f"brush_sizes must be a sequence of radii, got {brush_sizes!r}")
        sizes = tuple(brush_sizes)
        if not sizes:
            raise ValueError("brush_sizes must not be empty")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, float, np.number)) or not s > 0:
                raise ValueError(f"brush_sizes must all be positive numbers, got {s!r} in {sizes}")
        self.brush_sizes = sizes
        self.use_color = bool(use_color)
        self.use_pressure = bool(use_pressure)
        self.use_size = len(sizes) > 1
        self.brush_jitter = bool(brush_jitter)
        self.channels = 3 if self.use_color else 1

        spec = OrderedDict(
            control=self.grid_width**2,
            end=self.grid_width**2,
            flag=2,
            pressure=len(PRESSURE_VALUES),
            size=len(sizes),
            red=len(COLOR_VALUES),
            green=len(COLOR_VALUES),
            blue=len(COLOR_VALUES),
        )
        if not self.use_pressure:
            del spec["pressure"]
        if not self.use_size:
            del spec["size"]
        if not self.use_color:
            for k in COLOR_ACTIONS:
                del spec[k]
        self._action_spec = spec
        self._sizes = jnp.asarray(sizes, jnp.float32)
        self._pressures = jnp.asarray(PRESSURE_VALUES, jnp.float32)
        self._colors = jnp.asarray(COLOR_VALUES, jnp.float32)

    # -- specs -----------------------------------------------------------------------

    def action_mask(self, flag: jax.Array) -> dict[str, jax.Array]:
        """Which parts count after an action with this flag (1 paint, 0 move)."""
        paint = jnp.asarray(flag) == 1
        return {
            k: jnp.where(paint | (k in MOVE_PARTS), 1.0, 0.0).astype(jnp.float32)
            for k in self._action_spec
        }

    # -- dynamics --------------------------------------------------------------------

    def reset(self, key: jax.Array) -> tuple[EnvState, TimeStep]:
        """A white canvas, the pen up at (0, 0), the smallest brush, black, no pressure."""
        zero = jnp.zeros((), jnp.float32)
        state = EnvState(
            canvas=jnp.ones(self.observation_shape, jnp.float32),
            pen=jnp.zeros((2,), jnp.float32),
            pressure=zero if self.use_pressure else jnp.ones((), jnp.float32),
            is_painting=jnp.zeros((), bool),
            brush=jnp.zeros((2,), jnp.float32),
            speed_slow=zero,
            dab_phase=zero,
            episode_step=jnp.zeros((), jnp.int32),
            step_type=jnp.asarray(FIRST, jnp.int32),
            key=key,
        )
        ts = TimeStep(
            step_type=state.step_type,
            reward=zero,
            discount=jnp.ones((), jnp.float32),
            observation=self._observation(state, jnp.zeros((), jnp.int32)),
        )
        return state, ts

    def _grid_to_canvas(self, index: jax.Array) -> jax.Array:
        """Flat grid index -> (x, y) canvas coordinates of the cell's corner."""
        gy, gx = jnp.divmod(index, self.grid_width)
        scale = self.canvas_width / self.grid_width
        return jnp.stack([gx, gy]).astype(jnp.float32) * scale

    def decode_action(self, action: Mapping[str, Any]) -> dict[str, jax.Array]:
        """What an action's ids mean on the canvas, exactly as `step` reads them (ids
        clipped into range, as under `jit`), so that a description of an episode
        (`spiral_jax.program`) cannot drift from what was painted.

        Returns `flag` (1 paints, 0 moves), `control` and `end` (x, y) in canvas pixels,
        `pressure` (at the stroke's end; 1 without pressure), `radius` in pixels and
        `color` [channels] in [0, 1] (black ink on a one-channel canvas). A move uses
        only `end`.
        """
        pressure = self._pressures[self._part(action, "pressure")] if self.use_pressure else 1.0
        size = self._sizes[self._part(action, "size")] if self.use_size else self._sizes[0]
        if self.use_color:
            color = jnp.stack([self._colors[self._part(action, k)] for k in COLOR_ACTIONS])
        else:
            color = jnp.zeros((1,), jnp.float32)
        return dict(
            flag=self._part(action, "flag"),
            control=self._grid_to_canvas(self._part(action, "control")),
            end=self._grid_to_canvas(self._part(action, "end")),
            pressure=jnp.asarray(pressure, jnp.float32),
            radius=size,
            color=color,
        )

    def _paint(self, state: EnvState, action: Mapping[str, Any], key: jax.Array) -> EnvState:
        decoded = self.decode_action(action)
        control, end, size, color = (decoded[k] for k in ("control", "end", "radius", "color"))
        pressure_end = decoded["pressure"]

        # After a move (pen up) libmypaint's brush was reset: it starts at the pen, with
        # the new pressure, no speed and no partial dab.
        down = state.is_painting
        pressure_start = jnp.where(down, state.pressure, pressure_end)
        brush = jnp.where(down, state.brush, state.pen)
        speed_slow = jnp.where(down, state.speed_slow, 0.0)
        dab_phase = jnp.where(down, state.dab_phase, 0.0)
        points = dry_brush.quadratic_bezier(
            state.pen, control, end, dry_brush.STROKES_PER_STEP
        )
        dabs, brush_after = dry_brush.stroke_dabs(
            key=key,
            brush_pos=brush,
            points=points,
            pressure_start=pressure_start,
            pressure_end=pressure_end,
            speed_slow=speed_slow,
            dab_phase=dab_phase,
            base_radius=size,
            dab_budget=self.dab_budget,
            jitter=self.brush_jitter,
        )
        trans = dry_brush.transmittance(dabs, self.canvas_width)
        canvas = color + (state.canvas - color) * trans[..., None]
        return state.replace(
            canvas=canvas,
            pen=end,
            pressure=pressure_end,
            is_painting=jnp.ones((), bool),
            brush=brush_after["pos"],
            speed_slow=brush_after["speed_slow"],
            dab_phase=brush_after["dab_phase"],
        )

    def _move(self, state: EnvState, action: Mapping[str, Any]) -> EnvState:
        end = self._grid_to_canvas(self._part(action, "end"))
        # libmypaint: reset + stroke_to(end, pressure 0): the brush lands 0.7 % short.
        brush = state.brush + (end - state.brush) * dry_brush.TRACKING_FACTOR
        return state.replace(
            pen=end,
            is_painting=jnp.zeros((), bool),
            brush=brush,
            speed_slow=jnp.zeros((), jnp.float32),
            dab_phase=jnp.zeros((), jnp.float32),
        )

    def _transition(self, state: EnvState, action: Mapping[str, Any]) -> tuple[EnvState, TimeStep]:
        key, stroke_key = jax.random.split(state.key)
        flag = self._part(action, "flag")
        painted = self._paint(state, action, stroke_key)
        moved = self._move(state, action)
        new = jax.tree_util.tree_map(lambda p, m: jnp.where(flag == 1, p, m), painted, moved)
        step = state.episode_step + 1
        last = step >= self.episode_length - 1
        step_type = jnp.where(last, LAST, MID).astype(jnp.int32)
        new = new.replace(episode_step=step, step_type=step_type, key=key)
        ts = TimeStep(
            step_type=step_type,
            reward=jnp.zeros((), jnp.float32),
            discount=jnp.where(last, 0.0, 1.0).astype(jnp.float32),
            observation=self._observation(new, flag),
        )
        return new, ts

    def step(self, state: EnvState, action: Mapping[str, Any]) -> tuple[EnvState, TimeStep]:
        """Applies one action; after LAST it starts a new episode and ignores the action."""
        after_reset = self.reset(jax.random.fold_in(state.key, 1))
        stepped = self._transition(state, action)
        return jax.tree_util.tree_map(
            lambda r, s: jnp.where(state.step_type == LAST, r, s), after_reset, stepped
        )


def play(env: LibMyPaint, key: jax.Array, actions: Mapping[str, jax.Array]) -> jax.Array:
    """Replays one episode: reset, then the time-major actions (name -> [T]).

    Returns the observed canvases [T + 1, W, W, C], index 0 after the reset. Pure;
    `jax.vmap` it over episodes (actions `in_axes=1` for [T, K] arrays).
    """
    state, ts = env.reset(key)

    def body(s, a):
        s, ts = env.step(s, a)
        return s, ts.observation["canvas"]

    _, canvases = jax.lax.scan(body, state, dict(actions))
    return jnp.concatenate([ts.observation["canvas"][None], canvases])

