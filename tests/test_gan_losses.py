"""Tests of the discriminator's losses and the generator's reward (spiral_jax.gan_losses).

References are closed forms: linear and quadratic critics (whose input gradients are
known exactly) and numpy's log-sigmoid.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import discriminator as D
from spiral_jax import gan_losses as G


def _images(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------
# WGAN-GP: closed forms on linear and quadratic critics.


def _linear_critic(shape, conditional=False, seed=0):
    """channels=() makes D(x) = <w, flatten(x)> + b: its input gradient is w everywhere."""
    config = D.DiscriminatorConfig(channels=(), conditional=conditional)
    disc = D.make_discriminator(config)
    return disc, D.init_variables(disc, jax.random.key(seed), shape)


@pytest.mark.parametrize("conditional", [False, True])
def test_wgan_gp_loss_closed_form_on_linear_critic(conditional):
    shape = (5, 5, 2)
    disc, variables = _linear_critic(shape, conditional, seed=1)
    params = variables["params"]
    w = np.asarray(params["logit"]["kernel"], np.float64)[:, 0]
    bias = 0.3
    params = {"logit": {"kernel": params["logit"]["kernel"], "bias": jnp.array([bias])}}
    real = _images(2, (4,) + shape)
    fake = _images(3, (4,) + shape)
    fake_target = _images(4, (4,) + shape) if conditional else None

    def d_np(canvas, target):
        x = canvas if target is None else np.concatenate([canvas, target], axis=-1)
        return x.reshape(len(x), -1).astype(np.float64) @ w + bias

    d_real = d_np(real, real if conditional else None)  # real pairs: (target, target)
    d_fake = d_np(fake, fake_target)
    for gp_weight, gp_target, drift_weight in [(1.0, 1.0, 1e-3), (10.0, 0.5, 0.0),
                                               (0.0, 1.0, 0.1)]:
        loss, metrics = G.wgan_gp_loss(
            D.critic_fn(disc), params, jnp.asarray(real), jnp.asarray(fake),
            jax.random.key(7),
            fake_target=None if fake_target is None else jnp.asarray(fake_target),
            gp_weight=gp_weight, gp_target=gp_target, drift_weight=drift_weight,
        )
        # Gradient of <w, x> is w at every interpolate: the penalty is (||w|| - target)^2
        # whatever the interpolation weights.
        gp = (np.linalg.norm(w) - gp_target) ** 2
        drift = np.mean(np.concatenate([d_real, d_fake])) ** 2
        want = d_fake.mean() - d_real.mean() + gp_weight * gp + drift_weight * drift
        assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert float(metrics["gradient_penalty"]) == pytest.approx(gp, rel=1e-5)
        assert float(metrics["grad_norm"]) == pytest.approx(np.linalg.norm(w), rel=1e-5)
        assert float(metrics["wasserstein"]) == pytest.approx(d_real.mean() - d_fake.mean(),
                                                              rel=1e-5, abs=1e-6)
        assert float(metrics["drift"]) == pytest.approx(drift, rel=1e-4, abs=1e-9)


def test_real_target_makes_the_real_pairs():
    """With ``real_target`` the real pairs are (real, real_target), not (real, real), in
    both losses, and the penalty's interpolates interpolate both members."""
    shape = (4, 4, 4, 1)
    rng = np.random.default_rng(5)
    a, v = rng.normal(size=(4, 4, 2)), rng.normal(size=(4, 4, 2)) * 0.1

    def apply_fn(params, canvas, target):  # a conditional quadratic critic
        x = jnp.concatenate([canvas, target], axis=-1)
        return jnp.sum(params["a"] * x**2 + params["v"] * x, axis=(1, 2, 3))

    params = {"a": jnp.asarray(a, jnp.float32), "v": jnp.asarray(v, jnp.float32)}
    real, real_target, fake, fake_target = (jnp.asarray(_images(i, shape)) for i in range(4))
    eps = jnp.asarray(rng.uniform(size=4), jnp.float32)

    def d_np(canvas, target):
        x = np.concatenate([canvas, target], axis=-1).astype(np.float64)
        return np.sum(a * x**2 + v * x, axis=(1, 2, 3))

    d_real, d_fake = d_np(real, real_target), d_np(fake, fake_target)
    x_hat, t_hat, _ = G.interpolates(None, real, fake, real_target, fake_target, eps)
    e = np.asarray(eps, np.float64)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(t_hat), e * real_target + (1 - e) * fake_target,
                               rtol=1e-6, atol=1e-6)
    gp, _ = G.gradient_penalty(apply_fn, params, x_hat, t_hat)
    loss, metrics = G.wgan_gp_loss(apply_fn, params, real, fake, None, fake_target=fake_target,
                                   real_target=real_target, eps=eps, drift_weight=0.01)
    drift = np.mean(np.concatenate([d_real, d_fake])) ** 2
    want = d_fake.mean() - d_real.mean() + float(gp) + 0.01 * drift
    assert float(metrics["d_real"]) == pytest.approx(d_real.mean(), rel=1e-5)
    assert float(metrics["gradient_penalty"]) == pytest.approx(float(gp), rel=1e-5)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    _, gan = G.discriminator_loss("gan", apply_fn, params, real, fake, None,
                                  fake_target=fake_target, real_target=real_target)
    assert float(gan["d_real"]) == pytest.approx(d_real.mean(), rel=1e-5)
    # Without it the real pairs are (real, real).
    _, plain = G.gan_loss(apply_fn, params, real, fake, fake_target=fake_target)
    assert float(plain["d_real"]) == pytest.approx(d_np(real, real).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="real_target was given without fake_target"):
        G.gan_loss(apply_fn, params, real, fake, real_target=real_target)
    with pytest.raises(ValueError, match="real_target must have"):
        G.gan_loss(apply_fn, params, real, fake, fake_target=fake_target,
                   real_target=real_target[:3])


def _offset_critic(params, canvas, target):
    """D(x) = scale * (mean(x) - 0.5) + offset: ``offset`` is the constant a WGAN critic
    is defined up to, ``scale`` sets the real-fake spread."""
    del target
    return params["scale"] * (jnp.mean(canvas, axis=(1, 2, 3)) - 0.5) + params["offset"]


def test_drift_pins_the_critics_constant_and_leaves_its_spread_alone():
    """drift = (mean of D over real and fake)^2: 0, with zero gradient, when mean D(real)
    = -mean D(fake) however wide the spread; an offset c is pulled back towards 0."""
    shape = (6, 3, 3, 1)
    base = _images(0, shape)
    real = jnp.asarray(base * 0.4 + 0.6)  # mean(x) - 0.5 in [0.1, 0.5]
    fake = jnp.asarray(1.0 - np.asarray(real))  # mirrored: D(fake) = -D(real) at c = 0

    def drift_term(params):
        # The loss with the Wasserstein part and the penalty removed: gp_weight 0, and
        # the Wasserstein part mean D(fake) - mean D(real) differs from the loss by it.
        loss, metrics = G.wgan_gp_loss(_offset_critic, params, real, fake, jax.random.key(0),
                                       gp_weight=0.0, drift_weight=1.0)
        return loss + metrics["wasserstein"], metrics

    f = jax.jit(jax.value_and_grad(drift_term, has_aux=True))
    for scale in (0.5, 3.0, 40.0):
        (term, metrics), grads = f({"scale": jnp.float32(scale), "offset": jnp.float32(0.0)})
        assert float(metrics["wasserstein"]) > 0.1 * scale  # a real spread ...
        assert abs(float(term)) < 1e-6 and abs(float(metrics["drift"])) < 1e-6  # ... free
        assert abs(float(grads["scale"])) < 1e-5 and abs(float(grads["offset"])) < 1e-5
    # An offset: the float64 reference value, and a gradient 2 * mean that moves it to 0.
    for offset in (-2.0, 0.7):
        params = {"scale": jnp.float32(3.0), "offset": jnp.float32(offset)}
        (term, metrics), grads = f(params)
        x = np.concatenate([np.asarray(real), np.asarray(fake)]).astype(np.float64)
        mean = np.mean(3.0 * (x.reshape(len(x), -1).mean(1) - 0.5) + offset)
        assert float(metrics["drift"]) == pytest.approx(mean**2, rel=1e-5)
        assert float(term) == pytest.approx(mean**2, rel=1e-5)
        assert float(grads["offset"]) == pytest.approx(2.0 * mean, rel=1e-5)
        assert np.sign(float(grads["offset"])) == np.sign(offset)  # descent shrinks |c|
        assert abs(float(grads["scale"])) < 1e-4  # the spread is not penalised
    # Karras et al.'s mean D(real)^2 would instead pull the spread in (its gradient in
    # `scale` at offset 0 is 2 mean(D(real) * (mean(x) - 0.5)) > 0).


def test_drift_over_a_mapped_axis_equals_the_whole_batch():
    """With ``axis_name`` the drift's mean is the global batch's: split in two over a
    mapped axis, the value and the averaged gradients equal the unsplit loss's."""
    shape = (8, 3, 3, 1)
    real = jnp.asarray(_images(1, shape) * 0.5 + 0.5)
    fake = jnp.asarray(_images(2, shape) * 0.5)
    eps = jnp.asarray(np.random.default_rng(3).uniform(size=8), jnp.float32)
    params = {"scale": jnp.float32(2.0), "offset": jnp.float32(0.9)}

    def loss(p, real, fake, eps, axis_name=None):
        return G.wgan_gp_loss(_offset_critic, p, real, fake, None, gp_weight=1.0,
                              drift_weight=0.5, eps=eps, axis_name=axis_name)

    (whole, whole_metrics), whole_grads = jax.value_and_grad(loss, has_aux=True)(
        params, real, fake, eps)

    def local(real, fake, eps):
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
            params, real, fake, eps, "devices")
        return value, metrics, jax.lax.pmean(grads, "devices")

    def halves(x):
        return x.reshape((2, -1) + x.shape[1:])

    value, metrics, grads = jax.vmap(local, axis_name="devices")(
        halves(real), halves(fake), halves(eps))
    assert float(np.mean(value)) == pytest.approx(float(whole), rel=1e-5)
    np.testing.assert_allclose(np.asarray(metrics["drift"]), float(whole_metrics["drift"]),
                               rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(np.asarray(grads[name]), float(whole_grads[name]),
                                   rtol=1e-5, atol=1e-6)
    # Without the axis each half would square its own mean: a different drift.
    _, alone = loss(params, real[:4], fake[:4], eps[:4])
    assert abs(float(alone["drift"]) - float(whole_metrics["drift"])) > 1e-3


def test_gradient_penalty_quadratic_critic_matches_numpy():
    """D(x) = sum(a * x^2) + <v, x>: grad = 2 a x + v, a closed form at every point."""
    rng = np.random.default_rng(0)
    shape = (3, 4, 4, 2)
    a = rng.normal(size=shape[1:])
    v = rng.normal(size=shape[1:]) * 0.1

    def apply_fn(params, canvas, target):
        del target
        return jnp.sum(params["a"] * canvas**2 + params["v"] * canvas, axis=(1, 2, 3))

    params = {"a": jnp.asarray(a, jnp.float32), "v": jnp.asarray(v, jnp.float32)}
    real, fake = _images(1, shape), _images(2, shape)
    key = jax.random.key(3)
    x_hat, t_hat, eps = G.interpolates(key, jnp.asarray(real), jnp.asarray(fake))
    eps = np.asarray(eps, np.float64)
    assert t_hat is None and np.all((eps >= 0) & (eps <= 1)) and len(np.unique(eps)) == 3
    e = eps[:, None, None, None]
    x_np = e * real + (1 - e) * fake
    np.testing.assert_allclose(np.asarray(x_hat), x_np, rtol=1e-6, atol=1e-6)
    norms_np = np.linalg.norm((2 * a * x_np + v).reshape(3, -1), axis=1)
    gp, norms = G.gradient_penalty(apply_fn, params, x_hat, None, gp_target=1.0)
    np.testing.assert_allclose(np.asarray(norms), norms_np, rtol=1e-5)
    assert float(gp) == pytest.approx(np.mean((norms_np - 1.0) ** 2), rel=1e-5)
    # The loss's penalty is taken at exactly these interpolates (same key).
    _, metrics = G.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), key,
                                gp_weight=2.0)
    assert float(metrics["gradient_penalty"]) == pytest.approx(float(gp), rel=1e-6)
    # Explicit eps (e.g. from per-example keys) is used as given.
    _, explicit = G.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), None,
                                 gp_weight=2.0, eps=jnp.asarray(eps, jnp.float32))
    assert float(explicit["gradient_penalty"]) == pytest.approx(float(gp), rel=1e-6)
    with pytest.raises(ValueError, match="eps must have shape"):
        G.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), None,
                       eps=jnp.zeros((2,)))
    with pytest.raises(ValueError, match="key or explicit eps"):
        G.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), None)
    # And it is a function of the key.
    _, other = G.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake),
                              jax.random.key(4))
    assert float(other["gradient_penalty"]) != float(metrics["gradient_penalty"])


def test_gradient_penalty_is_differentiable_where_the_critic_is_flat():
    """A zero gradient at an interpolate must not give NaN (sqrt at 0)."""

    def apply_fn(params, canvas, target):
        return params["c"] * jnp.sum(canvas, axis=(1, 2, 3))

    real = jnp.ones((2, 3, 3, 1))
    grads = jax.jit(jax.grad(lambda p: G.wgan_gp_loss(apply_fn, p, real, real * 0.5,
                                                      jax.random.key(0))[0]))(
        {"c": jnp.float32(0.0)})
    assert np.isfinite(float(grads["c"]))


def test_wgan_sign_convention_training_separates_real_from_fake():
    """Minimising the critic loss raises D(real) and lowers D(fake)."""
    shape = (4, 4, 1)
    disc, variables = _linear_critic(shape)
    params = variables["params"]
    real = jnp.asarray(_images(1, (8,) + shape) * 0.3 + 0.7)  # light images
    fake = jnp.asarray(_images(2, (8,) + shape) * 0.3)  # dark images
    loss_fn = functools.partial(G.wgan_gp_loss, D.critic_fn(disc), real=real, fake=fake,
                                key=jax.random.key(0), gp_weight=0.0, drift_weight=0.0)
    loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    gap0 = -float(loss_and_grad(params)[0][0])
    for _ in range(3):
        _, grads = loss_and_grad(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    (_, metrics), _ = loss_and_grad(params)
    assert float(metrics["wasserstein"]) > gap0 + 0.1
    assert float(metrics["d_real"]) > float(metrics["d_fake"])


def test_gradient_penalty_rejects_unpaired_batches():
    disc, variables = _linear_critic((4, 4, 1))
    with pytest.raises(ValueError, match="one to one"):
        G.wgan_gp_loss(D.critic_fn(disc), variables["params"], jnp.zeros((4, 4, 4, 1)),
                       jnp.zeros((3, 4, 4, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match="differ in shape"):
        G.gan_loss(D.critic_fn(disc), variables["params"], jnp.zeros((4, 4, 4, 1)),
                   jnp.zeros((4, 5, 4, 1)))
    with pytest.raises(ValueError, match="fake_target"):
        G.gan_loss(D.critic_fn(disc), variables["params"], jnp.zeros((4, 4, 4, 1)),
                   jnp.zeros((4, 4, 4, 1)), fake_target=jnp.zeros((3, 4, 4, 1)))


# ----------------------------------------------------------------------------------------
# Standard GAN loss and the generator's reward.


def test_gan_loss_matches_numpy_and_sign():
    def apply_fn(params, canvas, target):
        del target
        return params["s"] * (jnp.mean(canvas, axis=(1, 2, 3)) - 0.5)

    real = _images(1, (5, 3, 3, 1)) * 0.5 + 0.5
    fake = _images(2, (7, 3, 3, 1)) * 0.5  # batches may differ in size
    params = {"s": jnp.float32(1.5)}
    loss, metrics = G.gan_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake))
    lr = 1.5 * (real.reshape(5, -1).mean(1) - 0.5)
    lf = 1.5 * (fake.reshape(7, -1).mean(1) - 0.5)

    def log_sigmoid(z):
        return -np.log1p(np.exp(-z))

    want = -np.mean(log_sigmoid(lr)) - np.mean(log_sigmoid(-lf))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(
        0.5 * (np.mean(lr > 0) + np.mean(lf < 0)))
    # A gradient step makes D more confident in the right direction.
    g = jax.grad(lambda p: G.gan_loss(apply_fn, p, jnp.asarray(real), jnp.asarray(fake))[0])(
        params)
    assert float(g["s"]) < 0


def test_discriminator_loss_dispatch_and_generator_reward():
    def apply_fn(params, canvas, target):
        return params * jnp.mean(canvas, axis=(1, 2, 3))

    real, fake = jnp.asarray(_images(0, (4, 2, 2, 1))), jnp.asarray(_images(1, (4, 2, 2, 1)))
    key = jax.random.key(0)
    for name, fn in (("wgan_gp", G.wgan_gp_loss), ("gan", G.gan_loss)):
        got = G.discriminator_loss(name, apply_fn, jnp.float32(2.0), real, fake, key)[0]
        assert float(got) == float(fn(apply_fn, jnp.float32(2.0), real, fake, key)[0])
    with pytest.raises(ValueError, match="wgan"):
        G.discriminator_loss("hinge", apply_fn, 1.0, real, fake, key)

    scores = jnp.asarray([-30.0, -2.0, 0.0, 3.0])
    np.testing.assert_array_equal(np.asarray(G.generator_reward(scores, "wgan_gp")), scores)
    np.testing.assert_array_equal(np.asarray(G.generator_reward(scores, "gan")), scores)
    want = -np.log1p(np.exp(-np.asarray(scores, np.float64)))
    np.testing.assert_allclose(
        np.asarray(G.generator_reward(scores, "gan", "log_sigmoid")), want, rtol=1e-6)
    with pytest.raises(ValueError, match="gan_reward"):
        G.generator_reward(scores, "gan", "sigmoid")


def test_check_loss_names_the_bad_value_and_the_allowed_ones():
    for loss in G.LOSSES:
        for reward in G.GAN_REWARDS:
            G.check_loss(loss, reward)
    with pytest.raises(ValueError, match=r"loss 'hinge'; allowed: \('wgan_gp', 'gan'\)"):
        G.check_loss("hinge")
    with pytest.raises(ValueError, match=r"gan_reward 'sigmoid'; allowed: \('logit', "):
        G.check_loss("gan", "sigmoid")
