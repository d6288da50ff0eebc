"""Tests of SPIRAL's discriminator network (spiral_jax.discriminator).

References are independent: a float64 numpy forward pass of the network, the closed
input gradient of a linear critic, numpy's SVD for spectral normalisation. Its losses
are tested in test_gan_losses.py, its strided convolution in test_layers.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import discriminator as D
from spiral_jax import gan_losses as G

# SPIRAL's discriminator for 64x64 canvases, and a smaller one.
PAPER = D.DiscriminatorConfig()
SMALL = D.DiscriminatorConfig(channels=(16, 32, 64))


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
        (SMALL, (28, 28, 1), 4 * 4 * 64),
        (SMALL, (32, 32, 3), 4 * 4 * 64),
        (SMALL, (64, 64, 3), 8 * 8 * 64),
        (PAPER, (64, 64, 3), 4 * 4 * 512),
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
    _, variables = _init(PAPER, (64, 64, 3))
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
            lambda p, disc=disc: G.wgan_gp_loss(D.critic_fn(disc), p, real, fake,
                                                jax.random.key(0), gp_weight=10.0),
            has_aux=True))(params))
    (loss_a, m_a), g_a = outs[0]
    (loss_b, m_b), g_b = outs[1]
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-5)
    assert float(m_a["gradient_penalty"]) == pytest.approx(float(m_b["gradient_penalty"]),
                                                           rel=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(g_a), jax.tree_util.tree_leaves(g_b), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("channels", (64, 0), r"disc\.channels=\(64, 0\): must be a tuple of positive ints"),
        ("channels", [64, -1], r"disc\.channels=\(64, -1\): must be a tuple of positive ints"),
        ("channels", (64, True), r"disc\.channels=\(64, True\): must be"),
        ("channels", "64", r"disc\.channels='64': must be"),
        ("dtype", "float16", r"disc\.dtype='float16'; allowed: \('float32', 'bfloat16'\)"),
        ("power_iterations", 0, r"disc\.power_iterations=0: must be an int >= 1"),
        ("leaky_slope", 1.5, r"disc\.leaky_slope=1\.5: must be in \[0, 1\)"),
        ("kernel_size", 0, r"disc\.kernel_size=0: must be a positive int"),
        ("spectral_norm", 1, r"disc\.spectral_norm=1: must be a bool"),
        ("cpu_friendly_conv", "yes", r"disc\.cpu_friendly_conv='yes': must be a bool"),
        ("conditional", None, r"disc\.conditional=None: must be a bool"),
        ("complement", "no", r"disc\.complement='no': must be a bool"),
        ("complement", True,
         r"disc\.complement=True needs a conditional discriminator \(conditional=True\)"),
    ],
)
def test_bad_config_raises_one_line_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        D.DiscriminatorConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_complement_needs_a_conditional_discriminator():
    with pytest.raises(ValueError, match=r"complement=True needs a conditional") as err:
        D.DiscriminatorConfig(complement=True, conditional=False)
    assert "\n" not in str(err.value)
    config = D.DiscriminatorConfig(channels=(4,), complement=True, conditional=True)
    hash(config)
    assert not D.DiscriminatorConfig().complement  # off by default


def test_config_from_json_lists_and_defaults():
    # A config.json gives lists: they become the tuples the module hashes.
    config = D.DiscriminatorConfig(channels=[64, 128])
    assert config.channels == (64, 128) and isinstance(config.channels, tuple)
    assert config == D.DiscriminatorConfig(channels=(64, 128))
    hash(config)  # a Flax module attribute must be hashable
    D.make_discriminator(config)
    # The defaults are SPIRAL's 64x64 critic without spectral norm.
    assert PAPER.channels == (64, 128, 256, 512) and not PAPER.spectral_norm
    assert (PAPER.kernel_size, PAPER.leaky_slope, PAPER.power_iterations) == (4, 0.2, 1)


def test_bad_inputs():
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


def _linear_critic(shape, seed=0, spectral_norm=False):
    """channels=() makes D(x) = <w, flatten(x)> + b: its input gradient is w everywhere."""
    return _init(D.DiscriminatorConfig(channels=(), spectral_norm=spectral_norm), shape, seed)


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
    _, norms = G.gradient_penalty(D.critic_fn(disc, spectral), params, x)
    np.testing.assert_allclose(np.asarray(norms), 1.0, rtol=1e-5)
    # Without spectral norm the same kernel has gradient norm ||w||, not 1.
    plain, _ = _linear_critic(shape)
    _, raw = G.gradient_penalty(D.critic_fn(plain), params, x)
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
            return G.gan_loss(D.critic_fn(disc, spectral), p, real, fake, fake_target=real)

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


@pytest.mark.parametrize("spectral_norm", [False, pytest.param(True, marks=pytest.mark.slow)])
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
    for name in G.LOSSES:
        (loss, metrics), grads = jax.jit(jax.value_and_grad(
            lambda p, name=name: G.discriminator_loss(name, apply_bf16, p, real, fake,
                                                      jax.random.key(0)),
            has_aux=True))(params)
        leaves = [loss, *metrics.values(), *jax.tree_util.tree_leaves(grads)]
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves), name
        assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
