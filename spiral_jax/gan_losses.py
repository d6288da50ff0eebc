"""The discriminator's losses and the agent's reward from its scores.

* SPIRAL (Ganin et al., 2018): the Wasserstein critic loss with a gradient penalty
  (WGAN-GP, Gulrajani et al., 2017), weight 1.0 and target norm 1.0 in SPIRAL's
  snapshots, plus a small "drift" term ``drift_weight * (mean of D over real and
  fake)^2``. The WGAN critic is defined only up to an added constant (the Wasserstein
  term and the penalty ignore it); SPIRAL keeps the mean of the critic's scores over
  real and fake examples near 0, and this term pins the constant there without
  penalising the spread D(real) - D(fake) that the critic is trained to widen. (Karras
  et al., 2018, Progressive GAN, Sec. A.1, penalise E[D(real)^2] instead, with
  eps_drift = 0.001, which also shrinks that spread; SPIRAL's weight is not published,
  0.001 is the default here.) The reward is the critic's score D(x).
* SPIRAL++ (Mellor et al., 2019): the standard GAN loss (Goodfellow et al., 2014),
  sigmoid cross-entropy on D's logit, with a spectral-norm D. See `generator_reward`.

Every loss takes a *critic function* ``apply_fn(params, canvas, target) -> scores``
(`spiral_jax.discriminator.critic_fn`) and the parameters to differentiate. It calls D
once on real and fake concatenated, and once on the interpolates (WGAN-GP).
Conditional discriminators judge (canvas, target) pairs: a real pair is (target,
target), a fake pair (canvas, target), unless ``real_target`` is given: then real pairs
are (real, real_target), e.g. SPIRAL++'s complement pairs (m * target, (1 - m) *
target) against (m * canvas, (1 - m) * target) (`spiral_jax.complement`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from spiral_jax.discriminator import CriticFn
from spiral_jax.types import Array

LOSSES = ("wgan_gp", "gan")
GAN_REWARDS = ("logit", "log_sigmoid")
# Added under the square root of the gradient norm: d sqrt(s)/ds is infinite at s = 0
# (a critic that is flat at an interpolate would give a NaN gradient).
_NORM_EPS = 1e-12


def _pairs(
    real: Array, fake: Array, fake_target: Array | None, real_target: Array | None = None
) -> tuple[Array, Array | None, Array, Array | None]:
    """(real canvas, real target, fake canvas, fake target): conditional real pairs are
    (real, real_target), or (target, target) when ``real_target`` is None; fake pairs
    (canvas, target)."""
    if getattr(real, "ndim", None) != 4 or getattr(fake, "ndim", None) != 4:
        raise ValueError(
            f"real and fake must be [B, H, W, C], got {getattr(real, 'shape', None)} "
            f"and {getattr(fake, 'shape', None)}"
        )
    if tuple(real.shape[1:]) != tuple(fake.shape[1:]):
        raise ValueError(
            f"real and fake images differ in shape: {tuple(real.shape)} vs {tuple(fake.shape)}"
        )
    if fake_target is None:
        if real_target is not None:
            raise ValueError("real_target was given without fake_target: both or neither")
        return real, None, fake, None
    if tuple(fake_target.shape) != tuple(fake.shape):
        raise ValueError(
            f"fake_target must have the fake canvases' shape {tuple(fake.shape)}, "
            f"got {tuple(fake_target.shape)}"
        )
    if real_target is None:
        return real, real, fake, fake_target
    if tuple(real_target.shape) != tuple(real.shape):
        raise ValueError(
            f"real_target must have the real images' shape {tuple(real.shape)}, "
            f"got {tuple(real_target.shape)}"
        )
    return real, real_target, fake, fake_target


def _scores_real_fake(
    apply_fn: CriticFn,
    params: Any,
    real: Array,
    real_t: Array | None,
    fake: Array,
    fake_t: Array | None,
) -> tuple[Array, Array]:
    # One forward pass over both halves: no layer couples examples, so this equals two
    # passes, at half the kernel launches.
    canvas = jnp.concatenate([real, fake], axis=0)
    target = None if real_t is None else jnp.concatenate([real_t, fake_t], axis=0)
    scores = apply_fn(params, canvas, target).astype(jnp.float32)
    n = real.shape[0]
    return scores[:n], scores[n:]


def interpolates(
    key: Array | None,
    real: Array,
    fake: Array,
    real_target: Array | None = None,
    fake_target: Array | None = None,
    eps: Array | None = None,
) -> tuple[Array, Array | None, Array]:
    """WGAN-GP's random points on the segments between real and fake inputs.

    x_hat = eps * real + (1 - eps) * fake with eps ~ U[0, 1] per example (Gulrajani et
    al., 2017, Alg. 1), drawn from ``key`` unless ``eps`` [B] is given (e.g. drawn
    from per-example keys, so that a data-parallel step does not depend on how the
    batch is split over devices). Conditional inputs are pairs: both members are
    interpolated. Returns (canvas_hat, target_hat or None, eps [B]).
    """
    if real.shape != fake.shape:
        raise ValueError(
            f"the gradient penalty pairs real and fake examples one to one; got real "
            f"{tuple(real.shape)} and fake {tuple(fake.shape)}"
        )
    if eps is None:
        if key is None:
            raise ValueError("interpolates needs a PRNG key or explicit eps")
        eps = jax.random.uniform(key, (real.shape[0],), jnp.float32)
    elif tuple(eps.shape) != (real.shape[0],):
        raise ValueError(f"eps must have shape ({real.shape[0]},), got {tuple(eps.shape)}")
    eps = eps.astype(jnp.float32)
    e = eps[:, None, None, None]
    x_hat = e * real + (1.0 - e) * fake
    t_hat = None if real_target is None else e * real_target + (1.0 - e) * fake_target
    return x_hat, t_hat, eps


def gradient_penalty(
    apply_fn: CriticFn,
    params: Any,
    canvas: Array,
    target: Array | None = None,
    gp_target: float = 1.0,
) -> tuple[Array, Array]:
    """E[(||grad_x D(x)|| - gp_target)^2] at the given inputs, and the norms [B].

    The gradient is taken with respect to D's whole input (both members of a
    conditional pair: the Lipschitz constraint is on D as a function of what it
    sees). Examples are independent, so the gradient of the summed scores gives each
    example's own gradient.
    """

    def total(inputs: tuple[Array, Array | None]) -> Array:
        return jnp.sum(apply_fn(params, inputs[0], inputs[1]).astype(jnp.float32))

    grads = jax.grad(total)((canvas.astype(jnp.float32), target))
    sq = jnp.sum(jnp.square(grads[0]), axis=(1, 2, 3))
    if target is not None:
        sq = sq + jnp.sum(jnp.square(grads[1]), axis=(1, 2, 3))
    norms = jnp.sqrt(sq + _NORM_EPS)
    return jnp.mean(jnp.square(norms - gp_target)), norms


def wgan_gp_loss(
    apply_fn: CriticFn,
    params: Any,
    real: Array,
    fake: Array,
    key: Array | None,
    *,
    fake_target: Array | None = None,
    real_target: Array | None = None,
    gp_weight: float = 1.0,
    gp_target: float = 1.0,
    drift_weight: float = 1e-3,
    eps: Array | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SPIRAL's critic loss: WGAN-GP plus a drift term; minimise it over ``params``.

    loss = mean D(fake) - mean D(real)
           + gp_weight * E[(||grad D(x_hat)|| - gp_target)^2]     (Gulrajani et al.)
           + drift_weight * (mean of D over real and fake)^2

    The drift term's gradient moves a constant offset c of the critic (D + c) towards
    the value that makes the mean score 0, and is 0 whatever the spread when
    mean D(real) = -mean D(fake): it fixes the constant the WGAN critic is defined up
    to, not its scale (Karras et al.'s mean D(real)^2 would also pull D(real) and so
    the Wasserstein estimate towards 0).

    Args:
      apply_fn: ``(params, canvas, target) -> scores [B]`` (see `critic_fn`).
      params: the critic's parameters (what the loss is differentiated by).
      real: real images [B, H, W, C]; for a conditional D the targets themselves
        (real pairs are (target, target)) or the first members of the real pairs.
      fake: generated canvases [B, H, W, C] (e.g. sampled from the replay).
      key: PRNG key for the interpolation weights (may be None when ``eps`` is given).
      fake_target: the targets the fake canvases were painted for (conditional D).
      real_target: the second members of the real pairs [B, H, W, C] (conditional D,
        with ``fake_target``); None: real pairs are (real, real). The complement
        discriminator's real pairs (`spiral_jax.complement`) need it.
      gp_weight: penalty weight (SPIRAL: 1.0; Gulrajani et al.: 10).
      gp_target: the gradient norm the penalty pulls towards (SPIRAL: 1.0).
      drift_weight: weight of the squared mean score over real and fake (SPIRAL
        keeps that mean near 0; 0.001 here, Karras et al.'s eps_drift).
      eps: optional interpolation weights [B] in [0, 1] (see `interpolates`).
      axis_name: inside `shard_map`, the mapped axis (or axes) the batch is split
        over and gradients are averaged over: the drift's mean is then taken over
        the global batch (its value and, once gradients are averaged, its gradient
        do not depend on the device count). None: this batch alone.

    Returns:
      (loss, metrics): float32 scalars. ``wasserstein`` = mean D(real) - mean D(fake),
      the critic's estimate of the distance.
    """
    real_c, real_t, fake_c, fake_t = _pairs(real, fake, fake_target, real_target)
    d_real, d_fake = _scores_real_fake(apply_fn, params, real_c, real_t, fake_c, fake_t)
    x_hat, t_hat, _ = interpolates(key, real_c, fake_c, real_t, fake_t, eps)
    gp, norms = gradient_penalty(apply_fn, params, x_hat, t_hat, gp_target)
    drift, drift_term = _drift(jnp.concatenate([d_real, d_fake]), axis_name)
    critic = jnp.mean(d_fake) - jnp.mean(d_real)
    loss = critic + gp_weight * gp + drift_weight * drift_term
    metrics = {
        "d_loss": loss,
        "d_real": jnp.mean(d_real),
        "d_fake": jnp.mean(d_fake),
        "wasserstein": -critic,
        "gradient_penalty": gp,
        "grad_norm": jnp.mean(norms),
        "drift": drift,
    }
    return loss, metrics


def _drift(scores: Array, axis_name: str | tuple[str, ...] | None) -> tuple[Array, Array]:
    """(mean(scores)^2 over the global batch, a term with its value and the gradient
    whose average over ``axis_name`` is the gradient of that square).

    Each device's term is M^2 + 2 M (m - stop_gradient(m)) with m its own mean and M
    the global one (held fixed): its gradient 2 M dm/dparams averages over equal
    device batches to 2 M dM/dparams = d(M^2)/dparams, without differentiating
    through a collective.
    """
    mean = jnp.mean(scores)
    fixed = jax.lax.stop_gradient(mean)
    if axis_name is not None:
        fixed = jax.lax.pmean(fixed, axis_name)
    drift = jnp.square(fixed)
    return drift, drift + 2.0 * fixed * (mean - jax.lax.stop_gradient(mean))


def gan_loss(
    apply_fn: CriticFn,
    params: Any,
    real: Array,
    fake: Array,
    key: Array | None = None,
    *,
    fake_target: Array | None = None,
    real_target: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The standard GAN discriminator loss on logits (Goodfellow et al., 2014).

    loss = E[-log sigmoid(D(real))] + E[-log(1 - sigmoid(D(fake)))]
         = E[softplus(-D(real))] + E[softplus(D(fake))]

    SPIRAL++ trains its spectral-norm D with it. ``key`` is unused (the signature
    matches `wgan_gp_loss`). Real and fake batches may differ in size. Arguments and
    conditional pairs as in `wgan_gp_loss`.
    """
    del key
    real_c, real_t, fake_c, fake_t = _pairs(real, fake, fake_target, real_target)
    d_real, d_fake = _scores_real_fake(apply_fn, params, real_c, real_t, fake_c, fake_t)
    loss_real = jnp.mean(jax.nn.softplus(-d_real))
    loss_fake = jnp.mean(jax.nn.softplus(d_fake))
    loss = loss_real + loss_fake
    accuracy = 0.5 * (jnp.mean((d_real > 0).astype(jnp.float32))
                      + jnp.mean((d_fake < 0).astype(jnp.float32)))
    metrics = {
        "d_loss": loss,
        "d_real": jnp.mean(d_real),
        "d_fake": jnp.mean(d_fake),
        "p_real": jnp.mean(jax.nn.sigmoid(d_real)),
        "p_fake": jnp.mean(jax.nn.sigmoid(d_fake)),
        "accuracy": accuracy,
    }
    return loss, metrics


def discriminator_loss(
    loss: str,
    apply_fn: CriticFn,
    params: Any,
    real: Array,
    fake: Array,
    key: Array | None,
    *,
    fake_target: Array | None = None,
    real_target: Array | None = None,
    gp_weight: float = 1.0,
    gp_target: float = 1.0,
    drift_weight: float = 1e-3,
    eps: Array | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """`wgan_gp_loss` or `gan_loss` by name (``loss`` in `LOSSES`); the WGAN weights
    (and ``axis_name``, which only the drift term uses) are ignored by the GAN loss."""
    check_loss(loss)
    if loss == "wgan_gp":
        return wgan_gp_loss(
            apply_fn, params, real, fake, key, fake_target=fake_target,
            real_target=real_target, gp_weight=gp_weight, gp_target=gp_target,
            drift_weight=drift_weight, eps=eps, axis_name=axis_name,
        )
    return gan_loss(apply_fn, params, real, fake, key, fake_target=fake_target,
                    real_target=real_target)


def check_loss(loss: str, gan_reward: str = "logit") -> None:
    """Raises ValueError for an unknown loss or GAN reward name."""
    if loss not in LOSSES:
        raise ValueError(f"unknown discriminator loss {loss!r}; allowed: {LOSSES}")
    if gan_reward not in GAN_REWARDS:
        raise ValueError(f"unknown gan_reward {gan_reward!r}; allowed: {GAN_REWARDS}")


def generator_reward(scores: Array, loss: str, gan_reward: str = "logit") -> Array:
    """The agent's reward from D's scores (float32, same shape).

    * ``wgan_gp``: the critic's score D(x) itself (SPIRAL).
    * ``gan``, ``gan_reward="logit"`` (default): D's logit l(x). At the optimal D,
      l(x) = log p_data(x) / p_agent(x), so its expectation over the agent's canvases
      is minus KL(agent || data): the reward is a log density ratio, shift-free like
      the WGAN critic, and per-step differences of it telescope to a difference of
      log ratios. It equals log sigmoid(l) - log(1 - sigmoid(l)), the sum of the
      non-saturating and the saturating (minimax) generator rewards.
    * ``gan``, ``gan_reward="log_sigmoid"``: log sigmoid(l) = log D(x), the
      non-saturating generator objective (Goodfellow et al., 2014); always <= 0.

    SPIRAL++ (Mellor et al., 2019) rewards the agent with the discriminator's output
    under a standard GAN loss; the text we could consult does not say which of the two
    forms, so both are offered and the logit is the default.
    """
    check_loss(loss, gan_reward)
    scores = scores.astype(jnp.float32)
    if loss == "wgan_gp" or gan_reward == "logit":
        return scores
    return jax.nn.log_sigmoid(scores)
