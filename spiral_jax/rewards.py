"""The agent's rewards, on time-major trajectories [T, B] (IMPALA / V-trace layout).

SPIRAL's environment returns no reward of its own; the agent's reward is computed
from its canvases, outside the environment:

* `terminal_d_reward`: D's score of the final canvas at the last step, 0 before
  (SPIRAL, Ganin et al., ICML 2018, Sec. 3; undiscounted).
* `per_step_d_reward`: r_t = gamma * D(c_{t+1}) - D(c_t), the change in D's score
  that step t's stroke made (SPIRAL++'s temporal credit assignment, Mellor et al.,
  2019), in the potential-based form of Ng, Harada & Russell (ICML 1999, "Policy
  invariance under reward transformations") with the canvas's score as potential.
  Why the gamma: the discounted return sum_t gamma^t r_t of an episode of T steps is
  then exactly gamma^T D(final) - D(blank), which depends on the final canvas alone,
  i.e. gamma times the terminal reward's return minus a constant no action changes,
  so both rewards favour the same policies. The plain difference D(c_{t+1}) - D(c_t)
  would discount each step's gain by when it was made and so pay for painting the
  target early rather than for ending on it: two episodes with the same final canvas
  would get different returns. With gamma = 1 the two forms coincide and telescope to
  D(final) - D(blank).
* `l2_reward` / `l2_per_step_reward`: the negative mean squared distance between
  canvas and target (the paper's conditional baseline, Sec. 5; the per-step form is
  the same potential-based difference applied to it). Both can average the distance
  over average-pooled scales (``pools``), which credits strokes that land near the ink.
* `standardize_scores`: D's scores centred and scaled over the batch, so that the
  critic's drifting offset and growing scale do not reach the agent.
* `stroke_penalty` and `empty_canvas_penalty`: the small penalties of SPIRAL's MNIST
  runs, for each stroke and for an empty final canvas (returned <= 0, to be added).

Time alignment follows `spiral_jax.rollout.Trajectory`: step t is the agent's
decision a_t at observation o_t; o_0 of an episode shows the blank canvas, and
c_{t+1}, the canvas of o_{t+1}, is what a_t produced. So for one whole episode
(``make_episode_rollout``, T = episode_length - 1), ``c_0`` is blank and ``c_T`` is
``final_canvas``; the masks come from the trajectory:

* ``is_last = traj.next_step_type == LAST``: a_t ended the episode.
* ``valid = traj.valid``: 0 for the dummy action a continuing unroll takes at a LAST
  observation (its "next canvas" is the next episode's blank one).
* ``prev_flag = traj.observation["action_mask"]["control"]``: the environment puts
  the mask of the previous action in each observation, and the move mask at FIRST,
  so a paint-only part's mask is 1 exactly when the pen was down before a_t.

All functions are pure, jittable and return float32 [T, B].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax.gan_losses import GAN_REWARDS
from spiral_jax.types import LAST, Array

#: Reward kinds a config can name (the penalties add to any of them).
REWARDS = ("terminal_d", "per_step_d", "l2", "l2_per_step")


def check_reward(kind: str) -> None:
    """Raises ValueError for an unknown reward kind."""
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; allowed: {REWARDS}")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """What the agent is paid; `config.reward` holds these fields."""

    kind: str = "terminal_d"  # terminal_d (SPIRAL) | per_step_d (SPIRAL++) | l2 | l2_per_step
    # gamma of the return (SPIRAL 1; SPIRAL++ per-step: 0.9-0.99): V-trace discounts by
    # it, and the per-step kinds pay gamma * Phi(c_{t+1}) - Phi(c_t) (Ng et al., 1999), so
    # that an episode's discounted return is gamma^T Phi(final) - Phi(blank) whatever path
    # led to the final canvas.
    discount: float = 1.0
    l2_pools: tuple[int, ...] = (1,)  # L2 rewards: averaged over these pooling factors
    scale: float = 1.0  # multiplies the D or L2 reward (not the penalties)
    # Standardise D's scores over the global batch, so that a WGAN critic's drifting
    # offset and growing scale do not reach the agent (L2 rewards ignore it).
    standardize_d: bool = False
    gan_reward: str = "logit"  # with a GAN-loss D: logit | log_sigmoid (gan_losses)
    stroke_penalty: float = 0.0  # per new stroke (SPIRAL's MNIST runs)
    empty_penalty: float = 0.0  # for an empty final canvas (SPIRAL's MNIST runs)

    def __post_init__(self) -> None:
        try:
            check_reward(self.kind)
        except ValueError as e:
            raise ValueError(f"reward.kind={self.kind!r}: {e}") from None
        try:
            object.__setattr__(self, "l2_pools", check_pools(self.l2_pools))  # JSON: lists
        except ValueError as e:
            raise ValueError(f"reward.l2_pools={self.l2_pools!r}: {e}") from None
        if self.gan_reward not in GAN_REWARDS:
            raise ValueError(f"reward.gan_reward={self.gan_reward!r}: allowed: {GAN_REWARDS}")
        if not self.scale > 0:
            raise ValueError(f"reward.scale={self.scale!r}: must be > 0")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"reward.discount={self.discount!r}: must be in [0, 1]")
        for name in ("stroke_penalty", "empty_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"reward.{name}={getattr(self, name)!r}: must be >= 0")

    @property
    def needs_target(self) -> bool:
        return self.kind.startswith("l2")


def episode_rewards(
    cfg: RewardConfig, traj: Any, targets: Array | None, d_score: Callable[[Array], Array]
) -> Array:
    """The rewards [T, B] of whole episodes (`rollout.rollout_episodes`), no gradient.

    Args:
      cfg: what to pay.
      traj: a time-major `rollout.Trajectory` of whole episodes.
      targets: [B, H, W, C] for conditional runs, else None.
      d_score: canvases [..., B, H, W, C] -> D's reward-scores [..., B] (already
        standardised when `cfg.standardize_d`); called only for D rewards.
    """
    is_last = traj.next_step_type == LAST
    if cfg.kind == "terminal_d":
        reward = terminal_d_reward(d_score(traj.final_canvas), is_last)
    elif cfg.kind == "l2":
        reward = l2_reward(traj.final_canvas, targets, is_last, cfg.l2_pools)
    else:
        # Canvases c_0 (blank) .. c_T (final) of each episode, [T + 1, B, H, W, C].
        canvases = jnp.concatenate([traj.observation["canvas"][:1], traj.next_canvas])
        # The return's own gamma, so that the shaping is potential-based (Ng et al. 1999).
        if cfg.kind == "per_step_d":
            reward = per_step_d_reward(d_score(canvases), discount=cfg.discount)
        else:
            reward = l2_per_step_reward(canvases, targets, pools=cfg.l2_pools,
                                        discount=cfg.discount)
    reward = cfg.scale * reward
    if cfg.stroke_penalty:
        # A paint-only part's mask in o_t is 1 exactly when the pen was down before a_t.
        prev_flag = traj.observation["action_mask"]["control"]
        reward = reward + stroke_penalty(traj.action["flag"], cfg.stroke_penalty,
                                         prev_flag=prev_flag)
    if cfg.empty_penalty:
        reward = reward + empty_canvas_penalty(traj.final_canvas, is_last, cfg.empty_penalty)
    return jax.lax.stop_gradient(reward)


def _shape(x: Any) -> tuple[int, ...] | None:
    return tuple(x.shape) if hasattr(x, "shape") else None


def _check_time_batch(name: str, x: Any, shape: tuple[int, ...] | None = None) -> None:
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name} must be time-major [T, B], got shape {_shape(x)}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def _check_weight(name: str, weight: Any) -> None:
    # Traced weights (e.g. tuned by population-based training) cannot be checked here.
    if isinstance(weight, (int, float, np.number)) and not weight >= 0:
        raise ValueError(f"{name} must be >= 0 (it is subtracted), got {weight!r}")


def _as_mask(x: Array) -> Array:
    return jnp.asarray(x).astype(jnp.float32)


def terminal_d_reward(scores: Array, is_last: Array) -> Array:
    """D's score where an episode ends, 0 elsewhere (SPIRAL).

    Args:
      scores: D's scores (already turned into rewards, see
        `discriminator.generator_reward`) of the canvas each action produced: either
        [T, B] (one per step, continuing unrolls) or [B] (of ``final_canvas``, for a
        whole-episode rollout, whose only last step is T - 1).
      is_last: [T, B], true (or 1) where a_t ended the episode.

    Returns:
      float32 [T, B].
    """
    _check_time_batch("is_last", is_last)
    t, b = is_last.shape
    if _shape(scores) not in ((t, b), (b,)):
        raise ValueError(f"scores must be [T, B] = {(t, b)} or [B] = {(b,)}, got {_shape(scores)}")
    scores = jnp.broadcast_to(scores.astype(jnp.float32), (t, b))
    return jnp.where(is_last.astype(bool), scores, 0.0)


def standardize_scores(
    scores: Array, axis_name: str | None = None, eps: float = 1e-6
) -> Array:
    """(s - mean(s)) / std(s) over every entry of ``scores`` (and over the devices of
    ``axis_name``, inside ``shard_map``, so that the result does not depend on how the
    batch is split).

    A WGAN critic is defined only up to an added constant, which SPIRAL's weak drift
    term leaves free to wander, and its scale grows as the critic pulls ahead of the
    agent. Both reach a raw-score reward: the wandering offset as noise that the value
    baseline has to chase, the growing scale as a policy gradient that outweighs the
    entropy bonus more and more as training goes on. Standardised scores keep
    only how each canvas ranks among the batch (reward normalisation, as in RL
    practice); per-step differences of them still telescope.

    Args:
      scores: float array of any shape, e.g. [B] or [T + 1, B].
      axis_name: a mapped axis to take the moments over as well, or None.
      eps: added to the variance; equal scores give 0.

    Returns:
      float32, same shape.
    """
    s = scores.astype(jnp.float32)

    def global_mean(x: Array) -> Array:
        m = jnp.mean(x)
        return m if axis_name is None else jax.lax.pmean(m, axis_name)

    # Two passes, not E[s^2] - E[s]^2: a runaway critic's offset can be far larger
    # than the spread between canvases, and float32 would cancel it away.
    centred = s - global_mean(s)
    return centred * jax.lax.rsqrt(global_mean(jnp.square(centred)) + eps)


def per_step_d_reward(
    canvas_scores: Array, valid: Array | None = None, discount: float = 1.0
) -> Array:
    """r_t = gamma * s_{t+1} - s_t, the change of D's score that a_t made (SPIRAL++), in
    the potential-based form of Ng, Harada & Russell (1999) with s as the potential.

    The gamma makes an episode's discounted return sum_t gamma^t r_t telescope to
    gamma^T s(final) - s(blank): it pays for the canvas the episode ends on, not for
    how early each part of it was painted, which the plain difference s_{t+1} - s_t
    would reward under a discount < 1.

    Args:
      canvas_scores: [T + 1, B], D's scores (as rewards) of the canvases c_0 .. c_T of
        o_0 .. o_T, o_T being the observation after the last step (``final_canvas``).
        For a whole episode c_0 is the blank canvas, so the discounted rewards sum to
        gamma^T s(final) - s(blank).
      valid: optional [T, B]; steps with 0 (the dummy action at a LAST observation of a
        continuing unroll, whose next canvas belongs to a new episode) get 0.
      discount: gamma, the discount of the return the rewards feed (`RewardConfig`'s);
        1 gives the plain difference s_{t+1} - s_t.

    Returns:
      float32 [T, B]. Within each episode the discounted rewards telescope.
    """
    _check_time_batch("canvas_scores", canvas_scores)
    t = canvas_scores.shape[0] - 1
    if t < 1:
        raise ValueError(f"canvas_scores needs T + 1 >= 2 rows, got {canvas_scores.shape[0]}")
    # Traced discounts (e.g. tuned by population-based training) cannot be checked here.
    if isinstance(discount, (int, float, np.number)) and not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount!r}")
    s = canvas_scores.astype(jnp.float32)
    r = jnp.asarray(discount, jnp.float32) * s[1:] - s[:-1]
    if valid is not None:
        _check_time_batch("valid", valid, (t, canvas_scores.shape[1]))
        r = r * _as_mask(valid)
    return r


def _average_pool(x: Array, factor: int) -> Array:
    """Means over non-overlapping factor x factor blocks of the (H, W) axes -3, -2."""
    h, w, c = x.shape[-3:]
    x = x.reshape(x.shape[:-3] + (h // factor, factor, w // factor, factor, c))
    return jnp.mean(x, axis=(-4, -2))


def check_pools(pools: Any, width: int | None = None) -> tuple[int, ...]:
    """The pooling factors as a tuple; ValueError unless each is a positive int that
    divides `width` (an image side, if given)."""
    pools = (pools,) if isinstance(pools, int) else tuple(pools)
    if not pools:
        raise ValueError("pools must name at least one pooling factor, e.g. (1,)")
    for f in pools:
        if not isinstance(f, (int, np.integer)) or f < 1:
            raise ValueError(f"pooling factors must be positive ints, got {f!r} in {pools}")
        if width is not None and width % f:
            raise ValueError(f"pooling factor {f} does not divide the image side {width}")
    return tuple(int(f) for f in pools)


def l2_score(canvas: Array, target: Array, pools: tuple[int, ...] = (1,)) -> Array:
    """-mean((canvas - target)^2) over the last three axes (H, W, C); any leading axes.

    With ``pools`` other than ``(1,)``: the average, over the factors f, of that score
    between the two images average-pooled over f x f blocks. Pooling gives a stroke
    credit for landing *near* the target's ink: at full resolution a stroke only pays
    off if most of its pixels fall on ink, so a policy that is not yet precise learns
    to stop painting; at a coarse scale a stroke in a block that holds ink pays off
    while it paints less than twice the block's ink. f = 1 keeps the exact objective
    in the mix.
    """
    if getattr(canvas, "ndim", 0) < 3 or _shape(canvas)[-3:] != _shape(target)[-3:]:
        raise ValueError(
            f"canvas and target must end in the same (H, W, C), got {_shape(canvas)} "
            f"and {_shape(target)}"
        )
    check_pools(pools, canvas.shape[-3])
    pools = check_pools(pools, canvas.shape[-2])
    canvas = canvas.astype(jnp.float32)
    target = target.astype(jnp.float32)
    total = 0.0
    for f in pools:
        c, t = (canvas, target) if f == 1 else (_average_pool(canvas, f), _average_pool(target, f))
        total = total - jnp.mean(jnp.square(c - t), axis=(-3, -2, -1))
    return total / len(pools)


def l2_reward(
    final_canvas: Array, target: Array, is_last: Array, pools: tuple[int, ...] = (1,)
) -> Array:
    """The paper's conditional baseline: -mean squared distance of the final canvas to
    the target at the last step, 0 elsewhere.

    Args:
      final_canvas: [B, H, W, C] (whole-episode rollout) or [T, B, H, W, C], the canvas
        each action produced (continuing unrolls).
      target: [B, H, W, C].
      is_last: [T, B].
      pools: average-pooling factors, see `l2_score`.
    """
    _check_time_batch("is_last", is_last)
    if _shape(target) is None or target.ndim != 4 or target.shape[0] != is_last.shape[1]:
        raise ValueError(f"target must be [B, H, W, C] with B = {is_last.shape[1]}, "
                         f"got {_shape(target)}")
    return terminal_d_reward(l2_score(final_canvas, target, pools), is_last)


def l2_per_step_reward(
    canvases: Array,
    target: Array,
    valid: Array | None = None,
    pools: tuple[int, ...] = (1,),
    discount: float = 1.0,
) -> Array:
    """r_t = gamma * l2_score(c_{t+1}) - l2_score(c_t): how much closer to the target a_t
    got, in the potential-based form (Ng et al. 1999) of `per_step_d_reward`, so that an
    episode's discounted return is gamma^T l2_score(final) - l2_score(blank).

    Args:
      canvases: [T + 1, B, H, W, C], the canvases c_0 .. c_T of o_0 .. o_T (for a
        rollout: ``concatenate([observation["canvas"], final_canvas[None]])``).
      target: [B, H, W, C].
      valid: optional [T, B] mask, as in `per_step_d_reward`.
      pools: average-pooling factors, see `l2_score`.
      discount: gamma, the return's discount, as in `per_step_d_reward`.
    """
    if getattr(canvases, "ndim", None) != 5:
        raise ValueError(f"canvases must be [T + 1, B, H, W, C], got {_shape(canvases)}")
    if _shape(target) != tuple(canvases.shape[1:]):
        raise ValueError(f"target must be {tuple(canvases.shape[1:])}, got {_shape(target)}")
    return per_step_d_reward(l2_score(canvases, target[None], pools), valid, discount)


def stroke_penalty(
    flag: Array,
    weight: float | Array,
    valid: Array | None = None,
    prev_flag: Array | None = None,
) -> Array:
    """-weight for each stroke (SPIRAL's MNIST runs), 0 for moves.

    Args:
      flag: int [T, B], a_t's flag (0 = move, 1 = paint).
      weight: penalty per stroke, >= 0.
      valid: optional [T, B] mask (the dummy action at a LAST observation is free).
      prev_flag: optional [T, B], 1 where the pen was down before a_t (the previous
        action of the same episode painted; 0 at episode starts; see the module
        docstring for where a trajectory has it). Given, only *new* strokes are
        penalised: paint steps that put the pen down, not those that continue a
        stroke. Omitted, every paint step counts.

    Returns:
      float32 [T, B], <= 0.
    """
    _check_time_batch("flag", flag)
    _check_weight("stroke penalty weight", weight)
    paint = (flag == 1).astype(jnp.float32)
    if prev_flag is not None:
        _check_time_batch("prev_flag", prev_flag, tuple(flag.shape))
        paint = paint * (1.0 - (prev_flag == 1).astype(jnp.float32))
    if valid is not None:
        _check_time_batch("valid", valid, tuple(flag.shape))
        paint = paint * _as_mask(valid)
    return -jnp.asarray(weight, jnp.float32) * paint


def is_empty(canvas: Array, blank_value: float = 1.0, tolerance: float = 0.5 / 255) -> Array:
    """True where no pixel of a canvas differs from ``blank_value`` by more than
    ``tolerance`` (default: half an 8-bit level). Reduces the last three axes."""
    if getattr(canvas, "ndim", 0) < 3:
        raise ValueError(f"canvas must end in (H, W, C), got {_shape(canvas)}")
    dev = jnp.abs(canvas.astype(jnp.float32) - blank_value)
    return jnp.max(dev, axis=(-3, -2, -1)) <= tolerance


def empty_canvas_penalty(
    final_canvas: Array,
    is_last: Array,
    weight: float | Array,
    blank_value: float = 1.0,
    tolerance: float = 0.5 / 255,
) -> Array:
    """-weight at the last step of episodes that end on an empty canvas (SPIRAL's MNIST
    runs), 0 elsewhere.

    Args:
      final_canvas: [B, H, W, C] or [T, B, H, W, C], as in `l2_reward`.
      is_last: [T, B].
      weight: >= 0.
      blank_value: the canvas's colour after reset (white, 1.0, in LibMyPaint).
      tolerance: largest per-pixel deviation from blank still counted as empty.
    """
    _check_weight("empty canvas penalty weight", weight)
    empty = is_empty(final_canvas, blank_value, tolerance).astype(jnp.float32)
    return terminal_d_reward(-jnp.asarray(weight, jnp.float32) * empty, is_last)
