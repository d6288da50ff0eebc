"""A painted episode as a program: its strokes, readable, replayable and drawable as SVG.

SPIRAL's agent writes a program for a graphics engine; the canvas is only what the
engine makes of it. This module keeps the program itself. A `Program` is the
environment's settings (what `LibMyPaint(**settings)` takes) and one `Step` per agent
decision, holding the raw action ids (the environment's action spec) and what they mean
on the canvas, read through the environment's own decoding (`LibMyPaint.decode_action`)
so that the description cannot drift from what was painted:

* `paint`: a quadratic Bézier stroke from `start` through `control` to `end`, with the
  brush `radius`, the `pressure` at its end (blended linearly from `pressure_start`,
  the previous stroke's, when the pen stayed down) and its `color`; or a move of the
  pen to `end` (`paint` false), which draws nothing;
* coordinates are (x, y) canvas pixels from the top-left corner, x to the right and y
  down; pixel (i, j) covers [i, i + 1) x [j, j + 1), as in SVG. `start` is where the
  pen was: the previous step's `end`, or the reset position (0, 0) for the first.

`to_json` / `from_json` write and read `program.json` (`from_json` checks every field
and raises a one-line ValueError naming a bad one), `to_actions` gives back the action
arrays `LibMyPaint.step` takes, `replay` runs them through the environment's pure
`reset` / `step` (with `brush_jitter=False` the canvas equals the painted one exactly),
and `spiral_jax.program_svg.to_svg` draws the strokes as SVG paths. docs/programs.md
shows an example.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from spiral_jax.baselines import random_actions
from spiral_jax.envs.libmypaint import LibMyPaint, play
from spiral_jax.types import is_int, is_number

FORMAT = "spiral_jax.program"
VERSION = 1
# Decimals kept in program.json: grid corners and the env's value tables are float32.
DECIMALS = 6
# How far a stored meaning may sit from what its ids decode to (rounding to DECIMALS).
TOLERANCE = 1e-4
SETTINGS = tuple(inspect.signature(LibMyPaint).parameters)
"""The fields of `Program.settings`: every argument `LibMyPaint` takes."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One agent decision: its raw action ids and what they mean on the canvas.

    Points are (x, y) canvas pixels. A move (`paint` False) uses `end` only; its
    stroke fields are None (its other ids are kept: they are part of the episode).
    """

    action: dict[str, int]
    paint: bool
    start: tuple[float, float]
    end: tuple[float, float]
    control: tuple[float, float] | None = None
    radius: float | None = None
    pressure_start: float | None = None
    pressure: float | None = None
    color: tuple[float, float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Program:
    """An episode: the environment's settings and its steps (`episode_length - 1`).

    `info` is free-form provenance (checkpoint, seed, ...), kept by the JSON round trip.
    """

    settings: dict[str, Any]
    steps: tuple[Step, ...]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def canvas_width(self) -> int:
        return int(self.settings["canvas_width"])

    @property
    def strokes(self) -> tuple[Step, ...]:
        """The steps that paint."""
        return tuple(s for s in self.steps if s.paint)


# ------------------------------------------------------------------------------------
# Environment <-> program.


def env_settings(env: LibMyPaint) -> dict[str, Any]:
    """What `LibMyPaint(**settings)` needs to rebuild `env`, JSON-ready."""
    missing = [k for k in SETTINGS if not hasattr(env, k)]
    if missing:
        raise ValueError(f"environment {env!r} does not expose settings {missing}")
    settings = {k: getattr(env, k) for k in SETTINGS}
    settings["brush_sizes"] = [float(s) for s in settings["brush_sizes"]]
    return settings


def make_env(settings: Mapping[str, Any]) -> LibMyPaint:
    """`LibMyPaint(**settings)`, shared between calls with the same settings (so that
    its jitted functions compile once); ValueError naming a bad or unknown field."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown environment settings {unknown}; allowed: {list(SETTINGS)}")
    frozen = tuple(
        (k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(settings.items())
    )
    return _cached_env(frozen)


@functools.lru_cache(maxsize=16)
def _cached_env(frozen: tuple[tuple[str, Any], ...]) -> LibMyPaint:
    return LibMyPaint(**dict(frozen))


@functools.lru_cache(maxsize=16)
def _decoder(env: LibMyPaint) -> Any:
    return jax.jit(jax.vmap(env.decode_action))


@functools.lru_cache(maxsize=16)
def _reset_pen(env: LibMyPaint) -> tuple[float, float]:
    """Where the pen starts an episode (the first stroke's start)."""
    state, _ = env.reset(jax.random.PRNGKey(0))
    return _point(np.asarray(state.pen))


def _round(x: Any) -> float:
    return round(float(x), DECIMALS)


def _point(xy: Any) -> tuple[float, float]:
    return (_round(xy[0]), _round(xy[1]))


def from_actions(env: LibMyPaint, actions: Mapping[str, Any],
                 info: Mapping[str, Any] | None = None) -> Program:
    """The program of one episode of `env`: `actions` maps each action part to its ids
    over the episode's steps, int [episode_length - 1] (e.g. `traj.action[k][:, i]`).

    ValueError for missing, unknown or out-of-range parts, or a wrong number of steps.
    """
    spec = env.action_spec()
    arrays = {k: np.asarray(v) for k, v in actions.items()}
    steps = env.episode_length - 1
    for k, v in arrays.items():
        if v.shape != (steps,):
            raise ValueError(
                f"actions[{k!r}] has shape {v.shape}; one episode of this environment has "
                f"{steps} steps (episode_length - 1)"
            )
    for t in range(steps):
        env.validate_action({k: v[t] for k, v in arrays.items()})
    decoded = jax.device_get(_decoder(env)({k: arrays[k].astype(np.int32) for k in spec}))
    pen = _reset_pen(env)
    pressure_before, pen_down = None, False
    out = []
    for t in range(steps):
        action = {k: int(arrays[k][t]) for k in spec}
        end = _point(decoded["end"][t])
        if int(decoded["flag"][t]) == 1:
            pressure = _round(decoded["pressure"][t])
            color = np.broadcast_to(decoded["color"][t], (3,))
            out.append(Step(
                action=action, paint=True, start=pen, end=end,
                control=_point(decoded["control"][t]), radius=_round(decoded["radius"][t]),
                # The env blends from the last stroke's pressure while the pen is down.
                pressure_start=pressure_before if pen_down else pressure,
                pressure=pressure, color=tuple(_round(c) for c in color),
            ))
            pressure_before, pen_down = pressure, True
        else:
            out.append(Step(action=action, paint=False, start=pen, end=end))
            pen_down = False
        pen = end
    return Program(env_settings(env), tuple(out), dict(info or {}))


def from_trajectory(env: LibMyPaint, trajectory: Any, episode: int,
                    info: Mapping[str, Any] | None = None) -> Program:
    """The program of episode `episode` of a time-major rollout (`spiral_jax.rollout`)."""
    actions = {k: np.asarray(v)[:, episode] for k, v in trajectory.action.items()}
    return from_actions(env, actions, info)


def random_programs(env: LibMyPaint, n: int, seed: int
                    ) -> tuple[list[Program], np.ndarray]:
    """Programs and final canvases [n, W, W, C] of n episodes of uniform random actions
    in `env` (a baseline, and the simplest test of a program's rendering)."""
    if int(n) != n or n < 1:
        raise ValueError(f"n={n!r}: must be a positive integer")
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    spec = dict(env.action_spec())
    actions = jax.vmap(lambda k: random_actions(spec, k, env.episode_length - 1))(keys)
    finals = np.asarray(jax.jit(jax.vmap(lambda k, a: play(env, k, a)[-1]))(keys, actions))
    actions = jax.device_get(actions)
    programs = [from_actions(env, {k: v[i] for k, v in actions.items()}) for i in range(n)]
    return programs, finals


def to_actions(program: Program) -> dict[str, np.ndarray]:
    """The program's actions as `LibMyPaint.step` takes them: part -> int32 [T], in the
    environment's action-spec order (`libmypaint.play` replays them)."""
    spec = make_env(program.settings).action_spec()
    return {k: np.asarray([s.action[k] for s in program.steps], np.int32) for k in spec}


@functools.lru_cache(maxsize=16)
def _player(env: LibMyPaint) -> Any:
    return jax.jit(functools.partial(play, env))


def replay(program: Program, key: jax.Array | None = None) -> np.ndarray:
    """The final canvas, float32 [W, W, C] as observed (8-bit levels), of the program
    replayed through its environment from `reset(key)`.

    The key only drives the brush's jitter: with `brush_jitter=False` the canvas is the
    painted one, exactly; with jitter it is another sample of the same brush.
    """
    env = make_env(program.settings)
    key = jax.random.PRNGKey(0) if key is None else key
    canvases = _player(env)(key, {k: np.asarray(v) for k, v in to_actions(program).items()})
    return np.asarray(canvases[-1])


# ------------------------------------------------------------------------------------
# JSON.


# A step's fields in program.json, in reading order.
_JSON_ORDER = ("action", "paint", "start", "control", "end", "radius", "pressure_start",
               "pressure", "color")
assert set(_JSON_ORDER) == {f.name for f in dataclasses.fields(Step)}


def to_dict(program: Program) -> dict[str, Any]:
    """The program as plain JSON types (what program.json holds)."""
    env = make_env(program.settings)
    steps = []
    for s in program.steps:
        d = dataclasses.asdict(s)
        steps.append({k: list(d[k]) if isinstance(d[k], tuple) else d[k]
                      for k in _JSON_ORDER if d[k] is not None})
    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": dict(program.settings),
        "action_spec": dict(env.action_spec()),
        "info": dict(program.info),
        "steps": steps,
    }


def to_json(program: Program) -> str:
    """program.json's text: one step per line, so that diffs and eyes can follow it."""
    d = to_dict(program)
    head = {k: v for k, v in d.items() if k != "steps"}
    text = json.dumps(head, indent=2)[:-2]  # reopen the object to add the steps
    lines = ",\n".join("    " + json.dumps(s) for s in d["steps"])
    return f'{text},\n  "steps": [\n{lines}\n  ]\n}}\n'


def from_json(text: str) -> Program:
    """The program in program.json's `text`; ValueError naming the first bad field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"program.json is not valid JSON: {e}") from e
    return from_dict(data)


def from_dict(data: Any) -> Program:
    """The program in `to_dict`'s form, checked field by field: the settings build the
    environment, the ids are in its range, and each stored meaning is what its ids
    decode to (ids are the program; meanings are for reading, so they must agree)."""
    if not isinstance(data, dict):
        raise ValueError(f"program must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"format={data.get('format')!r}; a program has format {FORMAT!r}")
    if data.get("version") != VERSION:
        raise ValueError(f"version={data.get('version')!r}; this reader reads version {VERSION}")
    unknown = sorted(set(data) - {"format", "version", "settings", "action_spec", "info",
                                  "steps"})
    if unknown:
        raise ValueError(f"unknown program fields {unknown}")
    settings = data.get("settings")
    if not isinstance(settings, dict):
        raise ValueError(f"settings={settings!r} must be an object of LibMyPaint's arguments")
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"settings lack {missing}; a program records all of {list(SETTINGS)}")
    try:
        env = make_env(settings)
    except (TypeError, ValueError) as e:  # LibMyPaint's own checks name the value
        raise ValueError(f"settings: {e}") from e
    spec = dict(env.action_spec())
    if "action_spec" in data and data["action_spec"] != spec:
        raise ValueError(
            f"action_spec={data['action_spec']!r} does not match the settings' {spec}"
        )
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"info={info!r} must be an object")
    steps = data.get("steps")
    if not isinstance(steps, list) or len(steps) != env.episode_length - 1:
        n = len(steps) if isinstance(steps, list) else steps
        raise ValueError(
            f"steps must be a list of episode_length - 1 = {env.episode_length - 1} steps, "
            f"got {n!r}"
        )
    actions = {}
    for t, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("action"), dict):
            raise ValueError(f"steps[{t}] must be an object with an 'action' object")
        for k, v in step["action"].items():
            if not is_int(v):
                raise ValueError(f"steps[{t}].action[{k!r}]={v!r} must be an integer id")
        try:
            env.validate_action(step["action"])
        except ValueError as e:
            raise ValueError(f"steps[{t}]: {e}") from e
        for k in spec:
            actions.setdefault(k, []).append(step["action"][k])
    program = from_actions(env, actions, info)
    for t, (stored, decoded) in enumerate(zip(steps, program.steps, strict=True)):
        _check_meaning(t, stored, dataclasses.asdict(decoded))
    return program


def _check_meaning(t: int, stored: dict[str, Any], decoded: dict[str, Any]) -> None:
    """ValueError unless the stored fields of step t are what its ids decode to."""
    expected = {k: v for k, v in decoded.items() if v is not None and k != "action"}
    unknown = sorted(set(stored) - set(expected) - {"action"})
    if unknown:
        raise ValueError(
            f"steps[{t}] has fields {unknown} that a "
            f"{'paint' if decoded['paint'] else 'move'} step does not have; "
            f"allowed: {['action', *expected]}"
        )
    for k, want in expected.items():
        if k not in stored:
            raise ValueError(f"steps[{t}] lacks {k!r} (its ids give {want!r})")
        got = stored[k]
        if isinstance(want, bool):
            ok = got is want
        elif isinstance(want, tuple):
            ok = (isinstance(got, list) and len(got) == len(want)
                  and all(is_number(g) and math.isclose(g, w, abs_tol=TOLERANCE)
                          for g, w in zip(got, want, strict=True)))
        else:
            ok = is_number(got) and math.isclose(got, want, abs_tol=TOLERANCE)
        if not ok:
            raise ValueError(
                f"steps[{t}].{k}={got!r} does not match its action ids, which give "
                f"{list(want) if isinstance(want, tuple) else want!r}"
            )


def save(program: Program, path: Any) -> None:
    """Writes program.json."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_json(program))


def load(path: Any) -> Program:
    """Reads program.json; ValueError (naming the file) for a bad one."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return from_json(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
