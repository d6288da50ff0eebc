"""The action spaces as the agent sees them: spec, masks, distributions.

An action is a dict of discrete parts. Two environments define them, and an action
spec's part names say which (`family_of`):

* libmypaint (`spiral_jax.envs.libmypaint`): the agent samples the parts in
  `HEAD_ORDER`, SPIRAL's order. Move (`flag` 0): only `flag` and `end` count; paint:
  all parts.
* scenes (`spiral_jax.envs.scenes`): in `SCENE_HEAD_ORDER`, the operation first (it
  decides what counts) and the grid cell next, so that the object's attributes are
  chosen knowing where it goes. Skip (`operation` 1): only `operation` counts; add and
  modify: all parts.

Parts that pick a grid cell (`LOCATION_PARTS`: libmypaint's `control` and `end`, the
scene's `position`) get the agent's spatial decoder; the others a linear head. The
agent returns the parts in the spec order. The environment's observation carries the
mask of the action that produced it; the mask of the action being taken now depends on
its own sampled gate part (`flag` or `operation`): `masks_of` derives it, and the
learner's log-probs and entropies of the parts it masks out are 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from spiral_jax.envs import scenes as scenes_env
from spiral_jax.envs.libmypaint import ACTION_NAMES, LOCATION_ACTIONS, MOVE_PARTS
from spiral_jax.layers import log2_stages
from spiral_jax.types import Array

# The order in which the agent samples the parts (SPIRAL's
# AutoregressiveHeads.ORDERS["libmypaint"]); results come back in ACTION_NAMES order.
HEAD_ORDER = ("flag", "end", "control", "size", "pressure", "red", "green", "blue")
REQUIRED_PARTS = ("control", "end", "flag")
# The scene's parts (all required), sampled operation first, then where, then what.
SCENE_HEAD_ORDER = ("operation", "position", "shape", "size", "red", "green", "blue")
# Parts that pick a cell of a square grid: the agent decodes them spatially.
LOCATION_PARTS = LOCATION_ACTIONS + ("position",)
LIBMYPAINT, SCENES = "libmypaint", "scenes"

ActionSpec = tuple[tuple[str, int], ...]


def family_of(action_spec: Mapping[str, int] | ActionSpec) -> str:
    """`SCENES` if the spec has the scene's `operation` part, else `LIBMYPAINT`."""
    names = action_spec if isinstance(action_spec, Mapping) else dict(action_spec)
    return SCENES if "operation" in names else LIBMYPAINT


def head_order(action_spec: Mapping[str, int] | ActionSpec) -> tuple[str, ...]:
    """The parts of `action_spec` in the order the agent samples them."""
    names = action_spec if isinstance(action_spec, Mapping) else dict(action_spec)
    order = SCENE_HEAD_ORDER if family_of(names) == SCENES else HEAD_ORDER
    return tuple(k for k in order if k in names)


def canonical_action_spec(action_spec: Mapping[str, int] | ActionSpec) -> ActionSpec:
    """Checks an environment's action spec and returns it as a hashable tuple.

    Args:
      action_spec: name -> number of choices, e.g. `env.action_spec()`.

    Returns:
      ((name, num_choices), ...) in SPIRAL's spec order.
    """
    items = tuple(action_spec.items()) if isinstance(action_spec, Mapping) else tuple(action_spec)
    if family_of(dict(items)) == SCENES:
        return _canonical_scene_spec(items)
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


def _canonical_scene_spec(items: ActionSpec) -> ActionSpec:
    """`canonical_action_spec` for the scene's action: every part, the position on a
    grid of 4 * 2^k cells a side (the agent's decoder upsamples from 4x4)."""
    names = scenes_env.ACTION_NAMES
    spec = {}
    for name, num in items:
        if name not in names:
            raise ValueError(f"unknown scene action part {name!r}; allowed: {names}")
        if int(num) < 1:
            raise ValueError(f"action part {name!r} needs >= 1 choice, got {num}")
        spec[name] = int(num)
    missing = [k for k in names if k not in spec]
    if missing:
        raise ValueError(f"scene action spec lacks {missing}; it has {tuple(spec)}")
    if spec["operation"] != len(scenes_env.OPERATIONS):
        raise ValueError(f"'operation' must have {len(scenes_env.OPERATIONS)} choices "
                         f"{scenes_env.OPERATIONS}, got {spec['operation']}")
    grid = math.isqrt(spec["position"])
    if grid * grid != spec["position"]:
        raise ValueError(f"'position' needs grid_width^2 choices, got {spec['position']}")
    log2_stages(grid, 4, "grid_width")
    return tuple((name, spec[name]) for name in names)


def grid_width_of(action_spec: ActionSpec) -> int:
    """The grid width G of an action spec whose location parts have G^2 choices."""
    spec = dict(action_spec)
    return math.isqrt(spec["position"] if family_of(spec) == SCENES else spec["end"])


def action_masks(flag: Array, names: tuple[str, ...] | ActionSpec) -> dict[str, Array]:
    """Which parts of an action count, given its sampled `flag` (SPIRAL's ACTION_MASKS).

    Paint (flag 1): all parts. Move (flag 0): only `flag` and `end`.
    """
    names = tuple(n if isinstance(n, str) else n[0] for n in names)
    paint = (flag == 1).astype(jnp.float32)
    return {k: jnp.ones_like(paint) if k in MOVE_PARTS else paint for k in names}


def scene_action_masks(operation: Array, names: tuple[str, ...] | ActionSpec
                       ) -> dict[str, Array]:
    """Which parts of a scene action count, given its sampled `operation`.

    Add and modify: all parts. Skip: only `operation` (the environment's
    `Scenes.action_mask`, which reports the same for the previous action).
    """
    names = tuple(n if isinstance(n, str) else n[0] for n in names)
    edits = (operation != scenes_env.SKIP).astype(jnp.float32)
    return {k: jnp.ones_like(edits) if k in scenes_env.SKIP_PARTS else edits for k in names}


def masks_of(action: Mapping[str, Array], action_spec: ActionSpec) -> dict[str, Array]:
    """Which parts of `action` count, from its own gate part: `action_masks` of its
    `flag` (libmypaint) or `scene_action_masks` of its `operation` (scenes)."""
    if family_of(action_spec) == SCENES:
        return scene_action_masks(action["operation"], action_spec)
    return action_masks(action["flag"], action_spec)


def changes_picture(action: Mapping[str, Array], action_spec: ActionSpec) -> Array:
    """Whether each action draws (a libmypaint stroke; a scene add or modify): bool."""
    if family_of(action_spec) == SCENES:
        return action["operation"] != scenes_env.SKIP
    return action["flag"] == 1


def _masked_log_softmax(lg: Array, mask: Array) -> tuple[Array, Array]:
    """(log_softmax of the logits, the mask as bool [...]); a masked-out part's logits
    are replaced by zeros first.

    Why: a part that does not count may carry any logits, -inf among them (a head that
    rules choices out). Its log-probs would then hold -inf or NaN, and both a product
    with a 0 mask (0 * inf = NaN) and the backward pass of log_softmax would turn
    those into NaN, even where `jnp.where` drops the value afterwards. Zeros give a
    finite log_softmax whose gradient `jnp.where` then cuts.
    """
    keep = jnp.asarray(mask) != 0
    return jax.nn.log_softmax(jnp.where(keep[..., None], lg, 0.0), axis=-1), keep


def _out_dtype(value: Array, mask: Array) -> jnp.dtype:
    # What value * mask gave before the masking used `jnp.where`: float32 logits with
    # float32 masks give float32, bfloat16 logits with float32 masks float32.
    return jnp.result_type(value, jnp.asarray(mask).dtype)


def masked_log_probs(
    logits: Mapping[str, Array], actions: Mapping[str, Array], masks: Mapping[str, Array]
) -> dict[str, Array]:
    """Per-part log-softmax(logits)[action] where the part's mask is nonzero, exactly 0
    elsewhere (whatever the masked part's logits, -inf included; no NaN values or
    gradients)."""
    out = {}
    for k, lg in logits.items():
        logp, keep = _masked_log_softmax(lg, masks[k])
        picked = jnp.take_along_axis(logp, actions[k][..., None].astype(jnp.int32), axis=-1)
        out[k] = jnp.where(keep, picked[..., 0], 0.0).astype(_out_dtype(picked, masks[k]))
    return out


def masked_entropies(logits: Mapping[str, Array], masks: Mapping[str, Array]) -> dict[str, Array]:
    """Per-part entropy -sum p log p of softmax(logits) where the part's mask is nonzero,
    exactly 0 elsewhere (as in `masked_log_probs`)."""
    out = {}
    for k, lg in logits.items():
        logp, keep = _masked_log_softmax(lg, masks[k])
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        out[k] = jnp.where(keep, ent, 0.0).astype(_out_dtype(ent, masks[k]))
    return out


def zero_action(action_spec: ActionSpec, batch_shape: tuple[int, ...]) -> dict[str, Array]:
    """The all-zeros action SPIRAL feeds as `previous action` at episode starts."""
    return {k: jnp.zeros(batch_shape, jnp.int32) for k, _ in action_spec}


def action_features(name: str, action: Array, num: int, grid: int) -> Array:
    """Features embedded for an action part: (y, x) in [-1, 1] for locations, else one-hot."""
    if name in LOCATION_PARTS:
        a = action.astype(jnp.int32)
        y = -1.0 + 2.0 * (a // grid).astype(jnp.float32) / (grid - 1)
        x = -1.0 + 2.0 * (a % grid).astype(jnp.float32) / (grid - 1)
        return jnp.stack([y, x], axis=-1)
    return jax.nn.one_hot(action, num, dtype=jnp.float32)
