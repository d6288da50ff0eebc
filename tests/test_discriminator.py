"""Tests of SPIRAL's discriminator and its losses (spiral_jax.discriminator).

References are independent: a float64 numpy forward pass of the network, closed forms
for linear and quadratic critics (whose input gradients are known exactly), numpy's
SVD for spectral normalisation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import discriminator as D


def _init(config: D.DiscriminatorConfig, shape, seed: int = 0):
    disc = D.make_discriminator(config)
    variables = D.init_variables(disc, jax.random.key(seed), shape)
    return disc, variables


def _images(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------
# The network.


@pytest.mark.parametrize(
    "config, shape, flat",
    [
        # 28 -> 14 -> 7 -> 4 with SAME padding: 4 * 4 * 64 features reach the last layer.
        (D.SMALL, (28, 28, 1), 4 * 4 * 64),
        (D.SMALL, (32, 32, 3), 4 * 4 * 64),
        (D.SMALL, (64, 64, 3), 8 * 8 * 64),
        (D.PAPER, (64, 64, 3), 4 * 4 * 512),
        (D.DiscriminatorConfig(channels=(8, 16), conditional=True), (28, 28, 1), 7 * 7 * 16),
    ],
)
def test_output_and_parameter_shapes(config, shape, flat):
    disc, variables = _init(config, shape)
    params = variables["params"]
    in_channels = shape[-1] * (2 if config.conditional else 1)
    widths = (in_channels,) + config.channels
    for i, width in enumerate(config.channels):
        assert params[f"conv_{i}"]["kernel"].shape == (4, 4, widths[i], width)
        assert params[f"conv_{i}"]["kernel"].dtype == jnp.float32
    assert params["logit"]["kernel"].shape == (flat, 1)
    assert "spectral" not in variables
    canvas = jnp.asarray(_images(1, (3,) + shape))
    target = canvas[::-1] if config.conditional else None
    out = D.critic_fn(disc)(params, canvas, target)
    assert out.shape == (3,) and out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))
    # Examples are independent (no batch norm): scoring one at a time gives the same.
    one = D.critic_fn(disc)(params, canvas[1:2], None if target is None else target[1:2])
    np.testing.assert_allclose(np.asarray(one)[0], np.asarray(out)[1], rtol=1e-5, atol=1e-6)


def test_score_canvases_over_time_and_batch():
    config = D.DiscriminatorConfig(channels=(4,), conditional=True)
    disc, variables = _init(config, (8, 8, 1))
    apply_fn = D.critic_fn(disc)
    canvases = jnp.asarray(_images(0, (3, 2, 8, 8, 1)))  # [T + 1, B, ...]
    target = jnp.asarray(_images(1, (2, 8, 8, 1)))  # one per episode
    got = D.score_canvases(apply_fn, variables["params"], canvases, target)
    assert got.shape == (3, 2)
    for t in range(3):
        want = apply_fn(variables["params"], canvases[t], target)
        np.testing.assert_allclose(np.asarray(got[t]), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_initialiser_statistics():
    """Sonnet 1's initialiser: truncated normal (+-2 sd), sd 1/sqrt(fan_in); zero bias."""
    _, variables = _init(D.PAPER, (64, 64, 3))
    trunc_sd = 0.8796256610342398  # sd of N(0, 1) truncated at +-2
    for name, layer in variables["params"].items():
        kernel = np.asarray(layer["kernel"], np.float64)
        fan_in = np.prod(kernel.shape[:-1])
        assert np.all(layer["bias"] == 0), name
        assert np.abs(kernel).max() <= 2.0 / np.sqrt(fan_in) + 1e-7, name
        if kernel.size > 5000:
            assert kernel.std() * np.sqrt(fan_in) == pytest.approx(trunc_sd, rel=0.05), name


def _same_conv_np(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """SAME-padded strided convolution, float64, by brute force (TF / XLA padding rule)."""
    b, h, w, _ = x.shape
    k = kernel.shape[0]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    out = np.zeros((b, out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.einsum("bhwc,hwcd->bd", patch, kernel)
    return out + bias


def _forward_np(params, canvas, target, slope=0.2, sigmas=None) -> np.ndarray:
    h = canvas if target is None else np.concatenate([canvas, target], axis=-1)
    h = h.astype(np.float64)
    n = len([k for k in params if k.startswith("conv_")])
    for i in range(n):
        kernel = np.asarray(params[f"conv_{i}"]["kernel"], np.float64)
        if sigmas is not None:
            kernel = kernel / sigmas[i]
        h = _same_conv_np(h, kernel, np.asarray(params[f"conv_{i}"]["bias"], np.float64), 2)
        h = np.where(h > 0, h, slope * h)
    kernel = np.asarray(params["logit"]["kernel"], np.float64)
    if sigmas is not None:
        kernel = kernel / sigmas[n]
    return (h.reshape(h.shape[0], -1) @ kernel)[:, 0] + float(params["logit"]["bias"][0])


@pytest.mark.parametrize("conditional, size", [(False, 9), (True, 9), (True, 8), (False, 12)])
def test_forward_matches_numpy(conditional, size):
    # Odd sizes exercise SAME padding's asymmetric split (and nn.Conv); even sizes the
    # CPU-friendly stride-2 conv; 12 -> 6 -> 3 uses both.
    config = D.DiscriminatorConfig(channels=(4, 6), conditional=conditional)
    disc, variables = _init(config, (size, size, 2), seed=3)
    # Non-zero biases, so that they are tested too.
    params = jax.tree_util.tree_map(
        lambda x: x + 0.1 if x.ndim == 1 else x, variables["params"]
    )
    canvas = _images(4, (2, size, size, 2))
    target = _images(5, (2, size, size, 2)) if conditional else None
    got = D.critic_fn(disc)(params, jnp.asarray(canvas),
                            None if target is None else jnp.asarray(target))
    want = _forward_np(params, canvas, target)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_cpu_friendly_conv_is_the_same_function_to_second_order():
    """conv_4x4_s2 and nn.Conv share parameters; the loss, its parameter gradients and
    the gradient penalty's (second-order) terms agree."""
    shape = (16, 16, 2)
    fast, variables = _init(D.DiscriminatorConfig(channels=(4, 8)), shape, seed=2)
    plain = D.make_discriminator(D.DiscriminatorConfig(channels=(4, 8), cpu_friendly_conv=False))
    params = variables["params"]
    real = jnp.asarray(_images(1, (3,) + shape))
    fake = jnp.asarray(_images(2, (3,) + shape))
    outs = []
    for disc in (fast, plain):
        outs.append(jax.jit(jax.value_and_grad(
            lambda p, disc=disc: D.wgan_gp_loss(D.critic_fn(disc), p, real, fake,
                                                jax.random.key(0), gp_weight=10.0),
            has_aux=True))(params))
    (loss_a, m_a), g_a = outs[0]
    (loss_b, m_b), g_b = outs[1]
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-5)
    assert float(m_a["gradient_penalty"]) == pytest.approx(float(m_b["gradient_penalty"]),
                                                           rel=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(g_a), jax.tree_util.tree_leaves(g_b), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bad_config_and_inputs():
    for bad in (dict(channels=[64, 128]), dict(channels=(64, 0)), dict(dtype="float16"),
                dict(power_iterations=0), dict(leaky_slope=1.5), dict(kernel_size=0),
                dict(spectral_norm=1), dict(cpu_friendly_conv="yes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            D.make_discriminator(D.DiscriminatorConfig(**bad))
    disc, variables = _init(D.DiscriminatorConfig(channels=(4,), conditional=True), (8, 8, 1))
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match="conditional"):
        D.critic_fn(disc)(variables["params"], x)
    with pytest.raises(ValueError, match="target"):
        D.critic_fn(disc)(variables["params"], x, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        D.critic_fn(disc)(variables["params"], x[0], x[0])
    plain, pvars = _init(D.DiscriminatorConfig(channels=(4,)), (8, 8, 1))
    with pytest.raises(ValueError, match="unconditional"):
        D.critic_fn(plain)(pvars["params"], x, x)
    with pytest.raises(ValueError, match="spectral"):
        D.critic_fn(plain, spectral={})
    sn = D.make_discriminator(D.DiscriminatorConfig(channels=(4,), spectral_norm=True))
    with pytest.raises(ValueError, match="spectral"):
        D.critic_fn(sn)
    with pytest.raises(ValueError, match="spectral_norm=True"):
        D.update_spectral_stats(plain, pvars["params"], None, (8, 8, 1))
    with pytest.raises(ValueError, match="canvas_shape"):
        D.init_variables(plain, jax.random.key(0), (8, 8))


# ----------------------------------------------------------------------------------------
# WGAN-GP: closed forms on linear and quadratic critics.


def _linear_critic(shape, conditional=False, seed=0, spectral_norm=False):
    """channels=() makes D(x) = <w, flatten(x)> + b: its input gradient is w everywhere."""
    config = D.DiscriminatorConfig(channels=(), conditional=conditional,
                                   spectral_norm=spectral_norm)
    return _init(config, shape, seed)


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
        loss, metrics = D.wgan_gp_loss(
            D.critic_fn(disc), params, jnp.asarray(real), jnp.asarray(fake),
            jax.random.key(7),
            fake_target=None if fake_target is None else jnp.asarray(fake_target),
            gp_weight=gp_weight, gp_target=gp_target, drift_weight=drift_weight,
        )
        # Gradient of <w, x> is w at every interpolate: the penalty is (||w|| - target)^2
        # whatever the interpolation weights.
        gp = (np.linalg.norm(w) - gp_target) ** 2
        want = (d_fake.mean() - d_real.mean() + gp_weight * gp
                + drift_weight * np.mean(d_real**2))
        assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert float(metrics["gradient_penalty"]) == pytest.approx(gp, rel=1e-5)
        assert float(metrics["grad_norm"]) == pytest.approx(np.linalg.norm(w), rel=1e-5)
        assert float(metrics["wasserstein"]) == pytest.approx(d_real.mean() - d_fake.mean(),
                                                              rel=1e-5, abs=1e-6)
        assert float(metrics["drift"]) == pytest.approx(np.mean(d_real**2), rel=1e-5)


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
    x_hat, t_hat, eps = D.interpolates(key, jnp.asarray(real), jnp.asarray(fake))
    eps = np.asarray(eps, np.float64)
    assert t_hat is None and np.all((eps >= 0) & (eps <= 1)) and len(np.unique(eps)) == 3
    e = eps[:, None, None, None]
    x_np = e * real + (1 - e) * fake
    np.testing.assert_allclose(np.asarray(x_hat), x_np, rtol=1e-6, atol=1e-6)
    norms_np = np.linalg.norm((2 * a * x_np + v).reshape(3, -1), axis=1)
    gp, norms = D.gradient_penalty(apply_fn, params, x_hat, None, gp_target=1.0)
    np.testing.assert_allclose(np.asarray(norms), norms_np, rtol=1e-5)
    assert float(gp) == pytest.approx(np.mean((norms_np - 1.0) ** 2), rel=1e-5)
    # The loss's penalty is taken at exactly these interpolates (same key).
    _, metrics = D.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), key,
                                gp_weight=2.0)
    assert float(metrics["gradient_penalty"]) == pytest.approx(float(gp), rel=1e-6)
    # Explicit eps (e.g. from per-example keys) is used as given.
    _, explicit = D.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), None,
                                 gp_weight=2.0, eps=jnp.asarray(eps, jnp.float32))
    assert float(explicit["gradient_penalty"]) == pytest.approx(float(gp), rel=1e-6)
    with pytest.raises(ValueError, match="eps must have shape"):
        D.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), None,
                       eps=jnp.zeros((2,)))
    with pytest.raises(ValueError, match="key or explicit eps"):
        D.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake), None)
    # And it is a function of the key.
    _, other = D.wgan_gp_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake),
                              jax.random.key(4))
    assert float(other["gradient_penalty"]) != float(metrics["gradient_penalty"])


def test_gradient_penalty_is_differentiable_where_the_critic_is_flat():
    """A zero gradient at an interpolate must not give NaN (sqrt at 0)."""

    def apply_fn(params, canvas, target):
        return params["c"] * jnp.sum(canvas, axis=(1, 2, 3))

    real = jnp.ones((2, 3, 3, 1))
    grads = jax.grad(lambda p: D.wgan_gp_loss(apply_fn, p, real, real * 0.5,
                                              jax.random.key(0))[0])({"c": jnp.float32(0.0)})
    assert np.isfinite(float(grads["c"]))


def test_wgan_sign_convention_training_separates_real_from_fake():
    """Minimising the critic loss raises D(real) and lowers D(fake)."""
    shape = (4, 4, 1)
    disc, variables = _linear_critic(shape)
    params = variables["params"]
    real = jnp.asarray(_images(1, (8,) + shape) * 0.3 + 0.7)  # light images
    fake = jnp.asarray(_images(2, (8,) + shape) * 0.3)  # dark images
    loss_fn = functools.partial(D.wgan_gp_loss, D.critic_fn(disc), real=real, fake=fake,
                                key=jax.random.key(0), gp_weight=0.0, drift_weight=0.0)
    gap0 = -float(loss_fn(params)[0])
    for _ in range(3):
        grads = jax.grad(lambda p: loss_fn(p)[0])(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    _, metrics = loss_fn(params)
    assert float(metrics["wasserstein"]) > gap0 + 0.1
    assert float(metrics["d_real"]) > float(metrics["d_fake"])


def test_gradient_penalty_rejects_unpaired_batches():
    disc, variables = _linear_critic((4, 4, 1))
    with pytest.raises(ValueError, match="one to one"):
        D.wgan_gp_loss(D.critic_fn(disc), variables["params"], jnp.zeros((4, 4, 4, 1)),
                       jnp.zeros((3, 4, 4, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match="differ in shape"):
        D.gan_loss(D.critic_fn(disc), variables["params"], jnp.zeros((4, 4, 4, 1)),
                   jnp.zeros((4, 5, 4, 1)))
    with pytest.raises(ValueError, match="fake_target"):
        D.gan_loss(D.critic_fn(disc), variables["params"], jnp.zeros((4, 4, 4, 1)),
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
    loss, metrics = D.gan_loss(apply_fn, params, jnp.asarray(real), jnp.asarray(fake))
    lr = 1.5 * (real.reshape(5, -1).mean(1) - 0.5)
    lf = 1.5 * (fake.reshape(7, -1).mean(1) - 0.5)

    def log_sigmoid(z):
        return -np.log1p(np.exp(-z))

    want = -np.mean(log_sigmoid(lr)) - np.mean(log_sigmoid(-lf))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(
        0.5 * (np.mean(lr > 0) + np.mean(lf < 0)))
    # A gradient step makes D more confident in the right direction.
    g = jax.grad(lambda p: D.gan_loss(apply_fn, p, jnp.asarray(real), jnp.asarray(fake))[0])(
        params)
    assert float(g["s"]) < 0


def test_discriminator_loss_dispatch_and_generator_reward():
    def apply_fn(params, canvas, target):
        return params * jnp.mean(canvas, axis=(1, 2, 3))

    real, fake = jnp.asarray(_images(0, (4, 2, 2, 1))), jnp.asarray(_images(1, (4, 2, 2, 1)))
    key = jax.random.key(0)
    for name, fn in (("wgan_gp", D.wgan_gp_loss), ("gan", D.gan_loss)):
        got = D.discriminator_loss(name, apply_fn, jnp.float32(2.0), real, fake, key)[0]
        assert float(got) == float(fn(apply_fn, jnp.float32(2.0), real, fake, key)[0])
    with pytest.raises(ValueError, match="wgan"):
        D.discriminator_loss("hinge", apply_fn, 1.0, real, fake, key)

    scores = jnp.asarray([-30.0, -2.0, 0.0, 3.0])
    np.testing.assert_array_equal(np.asarray(D.generator_reward(scores, "wgan_gp")), scores)
    np.testing.assert_array_equal(np.asarray(D.generator_reward(scores, "gan")), scores)
    want = -np.log1p(np.exp(-np.asarray(scores, np.float64)))
    np.testing.assert_allclose(
        np.asarray(D.generator_reward(scores, "gan", "log_sigmoid")), want, rtol=1e-6)
    with pytest.raises(ValueError, match="gan_reward"):
        D.generator_reward(scores, "gan", "sigmoid")


# ----------------------------------------------------------------------------------------
# Spectral normalisation.


def test_spectral_norm_power_iteration_converges_to_the_top_singular_value():
    shape = (16, 16, 3)
    config = D.DiscriminatorConfig(channels=(8, 16, 32), spectral_norm=True)
    disc, variables = _init(config, shape, seed=5)
    params, spectral = D.split_variables(variables)
    step = functools.partial(D.update_spectral_stats, disc, params, canvas_shape=shape)
    stats = jax.jit(lambda s: jax.lax.fori_loop(0, 300, lambda _, s: step(s), s))(spectral)

    sigmas = []
    names = [f"conv_{i}" for i in range(3)] + ["logit"]
    for i, name in enumerate(names):
        kernel = np.asarray(params[name]["kernel"], np.float64)
        matrix = kernel.reshape(-1, kernel.shape[-1])  # [k * k * C_in, C_out], as Miyato et al.
        top = np.linalg.svd(matrix, compute_uv=False)[0]
        sigma = float(stats[f"sn_{i}"][f"{name}/kernel/sigma"])
        assert sigma == pytest.approx(top, rel=1e-3), name
        # The normalised kernel's top singular value is 1.
        assert np.linalg.svd(matrix / sigma, compute_uv=False)[0] == pytest.approx(1.0, rel=1e-3)
        sigmas.append(sigma)
        # Fresh u vectors are far from converged (this is what the iterations fix).
        assert float(spectral[f"sn_{i}"][f"{name}/kernel/sigma"]) == 1.0

    # The forward pass uses kernel / sigma with the converged u: the numpy network with
    # every kernel divided by its top singular value.
    canvas = _images(6, (2,) + shape)
    got = D.critic_fn(disc, stats)(params, jnp.asarray(canvas))
    want = _forward_np(params, canvas, None, sigmas=sigmas)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-3, atol=1e-4)
    # Params are untouched by the statistics update, and evaluation does not move u.
    _, unchanged = disc.apply({"params": params, "spectral": stats}, jnp.asarray(canvas),
                              mutable=["spectral"])
    for a, b in zip(jax.tree_util.tree_leaves(unchanged["spectral"]),
                    jax.tree_util.tree_leaves(stats), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_spectral_norm_linear_critic_has_unit_input_gradient():
    """A spectrally normalised linear critic is exactly 1-Lipschitz: ||grad_x D|| = 1
    (a [F, 1] kernel's only singular value is its norm, found in one iteration)."""
    shape = (6, 6, 1)
    disc, variables = _linear_critic(shape, spectral_norm=True, seed=2)
    params, spectral = D.split_variables(variables)
    x = jnp.asarray(_images(0, (3,) + shape))
    _, norms = D.gradient_penalty(D.critic_fn(disc, spectral), params, x)
    np.testing.assert_allclose(np.asarray(norms), 1.0, rtol=1e-5)
    # Without spectral norm the same kernel has gradient norm ||w||, not 1.
    plain, _ = _linear_critic(shape)
    _, raw = D.gradient_penalty(D.critic_fn(plain), params, x)
    w = np.asarray(params["logit"]["kernel"])
    np.testing.assert_allclose(np.asarray(raw), np.linalg.norm(w), rtol=1e-5)


def test_spectral_norm_gradients_reach_params_only_and_train_under_jit():
    shape = (16, 16, 1)
    config = D.DiscriminatorConfig(channels=(8, 16), spectral_norm=True, conditional=True)
    disc, variables = _init(config, shape, seed=1)
    params, spectral = D.split_variables(variables)
    real = jnp.asarray(_images(1, (4,) + shape))
    fake = jnp.asarray(_images(2, (4,) + shape))

    @jax.jit
    def train_step(params, spectral):
        def loss(p):
            return D.gan_loss(D.critic_fn(disc, spectral), p, real, fake, fake_target=real)

        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads)
        return params, D.update_spectral_stats(disc, params, spectral, shape), value

    losses = []
    for _ in range(5):
        params, new_spectral, value = train_step(params, spectral)
        moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                       new_spectral, spectral)
        assert max(jax.tree_util.tree_leaves(moved)) > 0  # u and sigma advance each step
        spectral = new_spectral
        losses.append(float(value))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# ----------------------------------------------------------------------------------------
# bfloat16.


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_bfloat16_compute_has_no_nans_and_tracks_float32(spectral_norm):
    shape = (14, 14, 1)  # 14 -> 7 -> 4: both kinds of strided conv
    config = D.DiscriminatorConfig(channels=(8, 16), spectral_norm=spectral_norm,
                                   dtype="bfloat16")
    disc, variables = _init(config, shape, seed=4)
    params, spectral = D.split_variables(variables)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
    real = jnp.asarray(_images(1, (4,) + shape))
    fake = jnp.asarray(_images(2, (4,) + shape))
    apply_bf16 = D.critic_fn(disc, spectral)
    f32 = D.make_discriminator(D.DiscriminatorConfig(
        channels=(8, 16), spectral_norm=spectral_norm))
    scores16 = apply_bf16(params, real)
    scores32 = D.critic_fn(f32, spectral)(params, real)
    assert scores16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(scores16), np.asarray(scores32), rtol=0.1, atol=0.03)
    for name in D.LOSSES:
        (loss, metrics), grads = jax.jit(jax.value_and_grad(
            lambda p, name=name: D.discriminator_loss(name, apply_bf16, p, real, fake,
                                                      jax.random.key(0)),
            has_aux=True))(params)
        leaves = [loss, *metrics.values(), *jax.tree_util.tree_leaves(grads)]
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves), name
        assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
