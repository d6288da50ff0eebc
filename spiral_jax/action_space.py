"""SPIRAL's libmypaint action space as the agent sees it: spec, masks, distributions.

An action is a dict of discrete parts (`spiral_jax.envs.libmypaint`). The agent samples
them autoregressively in `HEAD_ORDER`, SPIRAL's order, and returns them in the spec
order. The environment's observation carries the mask of the action that produced it
(move: only `flag` and `end` count; paint: all parts); the mask of the action being
taken now depends on its own sampled `flag`: `action_masks` derives it, and the
log-probs and entropies of the learner are multiplied by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from spiral_jax.envs.libmypaint import ACTION_NAMES, LOCATION_ACTIONS, MOVE_PARTS
from spiral_jax.layers import log2_stages
from spiral_jax.types import Array

# The order in which the agent samples the parts (SPIRAL's
# AutoregressiveHeads.ORDERS["libmypaint"]); results come back in ACTION_NAMES order.
HEAD_ORDER = ("flag", "end", "control", "size", "pressure", "red", "green", "blue")
REQUIRED_PARTS = ("control", "end", "flag")

ActionSpec = tuple[tuple[str, int], ...]


def canonical_action_spec(action_spec: Mapping[str, int] | ActionSpec) -> ActionSpec:
    """Checks an environment's action spec and returns it as a hashable tuple.

    Args:
      action_spec: name -> number of choices, e.g. `env.action_spec()`.

    Returns:
      ((name, num_choices), ...) in SPIRAL's spec order.
    """
    items = tuple(action_spec.items()) if isinstance(action_spec, Mapping) else tuple(action_spec)
    spec = {}
    for name, num in items:
        if name not in ACTION_NAMES:
            raise ValueError(f"unknown action part {name!r}; allowed: {ACTION_NAMES}")
        num = int(num)
        if num < 1:
            raise ValueError(f"action part {name!r} needs >= 1 choice, got {num}")
        spec[name] = num
    for name in REQUIRED_PARTS:
        if name not in spec:
            raise ValueError(f"action spec lacks {name!r}; it has {tuple(spec)}")
    if spec["flag"] != 2:
        raise ValueError(f"'flag' must have 2 choices (move, paint), got {spec['flag']}")
    if spec["control"] != spec["end"]:
        raise ValueError(
            f"'control' and 'end' must share one grid, got {spec['control']} and {spec['end']}"
        )
    grid = math.isqrt(spec["end"])
    if grid * grid != spec["end"]:
        raise ValueError(f"location parts need grid_width^2 choices, got {spec['end']}")
    log2_stages(grid, 4, "grid_width")
    return tuple((name, spec[name]) for name in ACTION_NAMES if name in spec)


def grid_width_of(action_spec: ActionSpec) -> int:
    """The grid width G of an action spec whose location parts have G^2 choices."""
    return math.isqrt(dict(action_spec)["end"])


def action_masks(flag: Array, names: tuple[str, ...] | ActionSpec) -> dict[str, Array]:
    """Which parts of an action count, given its sampled `flag` (SPIRAL's ACTION_MASKS).

    Paint (flag 1): all parts. Move (flag 0): only `flag` and `end`.
    """
    names = tuple(n if isinstance(n, str) else n[0] for n in names)
    paint = (flag == 1).astype(jnp.float32)
    return {k: jnp.ones_like(paint) if k in MOVE_PARTS else paint for k in names}


def masked_log_probs(
    logits: Mapping[str, Array], actions: Mapping[str, Array], masks: Mapping[str, Array]
) -> dict[str, Array]:
    """Per-part log-softmax(logits)[action], times the part's mask."""
    out = {}
    for k, lg in logits.items():
        logp = jax.nn.log_softmax(lg, axis=-1)
        picked = jnp.take_along_axis(logp, actions[k][..., None].astype(jnp.int32), axis=-1)
        out[k] = picked[..., 0] * masks[k]
    return out


def masked_entropies(logits: Mapping[str, Array], masks: Mapping[str, Array]) -> dict[str, Array]:
    """Per-part entropy -sum p log p of softmax(logits), times the part's mask."""
    out = {}
    for k, lg in logits.items():
        logp = jax.nn.log_softmax(lg, axis=-1)
        out[k] = -jnp.sum(jnp.exp(logp) * logp, axis=-1) * masks[k]
    return out


def zero_action(action_spec: ActionSpec, batch_shape: tuple[int, ...]) -> dict[str, Array]:
    """The all-zeros action SPIRAL feeds as `previous action` at episode starts."""
    return {k: jnp.zeros(batch_shape, jnp.int32) for k, _ in action_spec}


def action_features(name: str, action: Array, num: int, grid: int) -> Array:
    """Features embedded for an action part: (y, x) in [-1, 1] for locations, else one-hot."""
    if name in LOCATION_ACTIONS:
        a = action.astype(jnp.int32)
        y = -1.0 + 2.0 * (a // grid).astype(jnp.float32) / (grid - 1)
        x = -1.0 + 2.0 * (a % grid).astype(jnp.float32) / (grid - 1)
        return jnp.stack([y, x], axis=-1)
    return jax.nn.one_hot(action, num, dtype=jnp.float32)
