"""The discriminator's losses and the agent's reward from its scores.

* SPIRAL (Ganin et al., 2018): the Wasserstein critic loss with a gradient penalty
  (WGAN-GP, Gulrajani et al., 2017), weight 1.0 and target norm 1.0 in SPIRAL's
  snapshots, plus a small "drift" term ``drift_weight * E[D(real)^2]`` that keeps the
  critic's scores near 0 (the form of Karras et al., 2018, Progressive GAN, Sec. A.1,
  eps_drift = 0.001; SPIRAL used a term of this kind, its weight is not published). The
  reward is the critic's score D(x).
* SPIRAL++ (Mellor et al., 2019): the standard GAN loss (Goodfellow et al., 2014),
  sigmoid cross-entropy on D's logit, with a spectral-norm D. See `generator_reward`.

Every loss takes a *critic function* ``apply_fn(params, canvas, target) -> scores``
(`spiral_jax.discriminator.critic_fn`) and the parameters to differentiate. It calls D
once on real and fake concatenated, and once on the interpolates (WGAN-GP).
Conditional discriminators judge (canvas, target) pairs: a real pair is (target,
target), a fake pair (canvas, target).
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
    real: Array, fake: Array, fake_target: Array | None
) -> tuple[Array, Array | None, Array, Array | None]:
    """(real canvas, real target, fake canvas, fake target): conditional real pairs are
    (target, target), fake pairs (canvas, target)."""
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
        return real, None, fake, None
    if tuple(fake_target.shape) != tuple(fake.shape):
        raise ValueError(
            f"fake_target must have the fake canvases' shape {tuple(fake.shape)}, "
            f"got {tuple(fake_target.shape)}"
        )
    return real, real, fake, fake_target


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
    gp_weight: float = 1.0,
    gp_target: float = 1.0,
    drift_weight: float = 1e-3,
    eps: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SPIRAL's critic loss: WGAN-GP plus a drift term; minimise it over ``params``.

    loss = mean D(fake) - mean D(real)
           + gp_weight * E[(||grad D(x_hat)|| - gp_target)^2]     (Gulrajani et al.)
           + drift_weight * mean D(real)^2                          (Karras et al.)

    Args:
      apply_fn: ``(params, canvas, target) -> scores [B]`` (see `critic_fn`).
      params: the critic's parameters (what the loss is differentiated by).
      real: real images [B, H, W, C]; for a conditional D the targets themselves
        (real pairs are (target, target)).
      fake: generated canvases [B, H, W, C] (e.g. sampled from the replay).
      key: PRNG key for the interpolation weights (may be None when ``eps`` is given).
      fake_target: the targets the fake canvases were painted for (conditional D).
      gp_weight: penalty weight (SPIRAL: 1.0; Gulrajani et al.: 10).
      gp_target: the gradient norm the penalty pulls towards (SPIRAL: 1.0).
      drift_weight: weight of mean D(real)^2 (Karras et al.: 0.001).
      eps: optional interpolation weights [B] in [0, 1] (see `interpolates`).

    Returns:
      (loss, metrics): float32 scalars. ``wasserstein`` = mean D(real) - mean D(fake),
      the critic's estimate of the distance.
    """
    real_c, real_t, fake_c, fake_t = _pairs(real, fake, fake_target)
    d_real, d_fake = _scores_real_fake(apply_fn, params, real_c, real_t, fake_c, fake_t)
    x_hat, t_hat, _ = interpolates(key, real_c, fake_c, real_t, fake_t, eps)
    gp, norms = gradient_penalty(apply_fn, params, x_hat, t_hat, gp_target)
    drift = jnp.mean(jnp.square(d_real))
    critic = jnp.mean(d_fake) - jnp.mean(d_real)
    loss = critic + gp_weight * gp + drift_weight * drift
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


def gan_loss(
    apply_fn: CriticFn,
    params: Any,
    real: Array,
    fake: Array,
    key: Array | None = None,
    *,
    fake_target: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The standard GAN discriminator loss on logits (Goodfellow et al., 2014).

    loss = E[-log sigmoid(D(real))] + E[-log(1 - sigmoid(D(fake)))]
         = E[softplus(-D(real))] + E[softplus(D(fake))]

    SPIRAL++ trains its spectral-norm D with it. ``key`` is unused (the signature
    matches `wgan_gp_loss`). Real and fake batches may differ in size. Arguments and
    conditional pairs as in `wgan_gp_loss`.
    """
    del key
    real_c, real_t, fake_c, fake_t = _pairs(real, fake, fake_target)
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
    gp_weight: float = 1.0,
    gp_target: float = 1.0,
    drift_weight: float = 1e-3,
    eps: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """`wgan_gp_loss` or `gan_loss` by name (``loss`` in `LOSSES`); the WGAN weights are
    ignored by the GAN loss."""
    check_loss(loss)
    if loss == "wgan_gp":
        return wgan_gp_loss(
            apply_fn, params, real, fake, key, fake_target=fake_target,
            gp_weight=gp_weight, gp_target=gp_target, drift_weight=drift_weight, eps=eps,
        )
    return gan_loss(apply_fn, params, real, fake, key, fake_target=fake_target)


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
