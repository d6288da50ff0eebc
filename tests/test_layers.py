"""Tests of the layers shared by the agent and the discriminator (spiral_jax.layers).

References are independent: float64 numpy brute force of the strided and transposed
convolutions and of Sonnet's LSTM, autodiff through `lax.conv_general_dilated` for the
custom gradient, Flax's own layers for parameter compatibility, and the moments of a
truncated normal for the initialisers.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import layers as L

# sd of a standard normal truncated at +-2 (what "truncated normal with sd s" has).
TRUNC_SD = 0.8796256610342398


# ----------------------------------------------------------------------------------------
# 4x4 stride-2 convolutions and transposed convolutions.


def _np_conv_4x4_s2(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Float64 brute force of a 4x4 stride-2 SAME conv (pad 1 before, 1 after):
    y[i, j] = sum_{ky, kx} x[2i + ky - 1, 2j + kx - 1] w[ky, kx]."""
    n, h, wd, _ = x.shape
    y = np.zeros((n, h // 2, wd // 2, w.shape[-1]))
    for i in range(h // 2):
        for j in range(wd // 2):
            for ky in range(4):
                for kx in range(4):
                    yy, xx = 2 * i + ky - 1, 2 * j + kx - 1
                    if 0 <= yy < h and 0 <= xx < wd:
                        y[:, i, j] += x[:, yy, xx] @ w[ky, kx]
    return y


def _np_conv_transpose_4x4_s2(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Float64 brute force of lax.conv_transpose(stride 2, SAME) with a 4x4 kernel:
    input (i, j) reaches output (2i + 2 - ky, 2j + 2 - kx) through tap (ky, kx)."""
    n, h, wd, _ = x.shape
    y = np.zeros((n, 2 * h, 2 * wd, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            for ky in range(4):
                for kx in range(4):
                    oy, ox = 2 * i + 2 - ky, 2 * j + 2 - kx
                    if 0 <= oy < 2 * h and 0 <= ox < 2 * wd:
                        y[:, oy, ox] += x[:, i, j] @ w[ky, kx]
    return y


def test_fast_strided_conv_and_transposed_conv_match_brute_force():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 8, 6, 3))
    w = rng.normal(size=(4, 4, 3, 5))
    got = L.conv_4x4_s2(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(got, _np_conv_4x4_s2(x, w), atol=1e-4)
    got_t = L.conv_transpose_4x4_s2(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(got_t, _np_conv_transpose_4x4_s2(x, w), atol=1e-4)
    # The same function as Flax's own layers with the same parameters.
    for fast, ref in (
        (L.ConvTranspose4x4(5), nn.ConvTranspose(5, (4, 4), (2, 2))),
        (L.StridedConv(5), nn.Conv(5, (4, 4), (2, 2))),
    ):
        params = fast.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
        params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
        np.testing.assert_allclose(
            fast.apply(params, jnp.asarray(x, jnp.float32)),
            ref.apply(params, jnp.asarray(x, jnp.float32)),
            atol=1e-5,
        )


def test_fast_strided_conv_gradients_match_autodiff():
    """conv_4x4_s2's custom input gradient equals autodiff through lax's convolution."""
    rng = np.random.default_rng(13)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, 3, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 4, 4, 5)), jnp.float32)

    def plain(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    _, vjp_fast = jax.vjp(L.conv_4x4_s2, x, w)
    _, vjp_ref = jax.vjp(plain, x, w)
    for got, want in zip(vjp_fast(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="even height and width"):
        L.StridedConv(4).init(jax.random.key(0), jnp.ones((1, 7, 8, 3)))


def test_strided_conv_computes_in_its_dtype_with_float32_parameters():
    """`StridedConv(dtype=...)` (the discriminator's bfloat16 layers) keeps float32
    parameters and computes what the float32 layer does, to bfloat16 precision."""
    x = jnp.asarray(np.random.default_rng(15).normal(size=(2, 8, 8, 3)), jnp.float32)
    params = L.StridedConv(5).init(jax.random.key(0), x)
    low = L.StridedConv(5, dtype=jnp.bfloat16)
    low_params = low.init(jax.random.key(0), x)
    assert jax.tree.structure(low_params) == jax.tree.structure(params)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(low_params))
    got = low.apply(params, x)
    want = L.StridedConv(5).apply(params, x)
    assert got.dtype == jnp.bfloat16 and want.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------------------
# The coordinate conv and the narrow conv (the same functions, arranged for speed).


def _np_conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Float64 brute force of a stride-1 SAME conv with an odd kernel."""
    k = w.shape[0]
    p = (k - 1) // 2
    n, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = np.zeros((n, h, wd, w.shape[-1]))
    for ky in range(k):
        for kx in range(k):
            y += xp[:, ky : ky + h, kx : kx + wd] @ w[ky, kx]
    return y


@pytest.mark.parametrize("channels", [1, 3])
def test_coord_conv_is_flax_conv_of_images_and_coordinates(channels):
    """CoordConv has flax.linen.Conv's parameters and computes its function (values and
    gradients) on the images with x and y coordinate channels appended; the
    coordinates are linspace(-1, 1) along each axis, x first."""
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.uniform(size=(3, 8, 8, channels)), jnp.float32)
    layer = L.CoordConv(6, 5)
    params = layer.init(jax.random.key(0), images)
    ref = nn.Conv(6, (5, 5), padding="SAME")
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(0), jnp.ones((1, 8, 8, channels + 2)))
    )
    coords = np.stack(np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8)), -1)
    np.testing.assert_allclose(L.coordinate_channels(8, 8), coords, atol=1e-7)
    full = jnp.concatenate([images, jnp.broadcast_to(coords, (3, 8, 8, 2))], -1)
    want = _np_conv_same(
        np.asarray(full, np.float64), np.asarray(params["params"]["kernel"], np.float64)
    ) + np.asarray(params["params"]["bias"])
    np.testing.assert_allclose(layer.apply(params, images), want, atol=2e-5)

    g = jnp.asarray(rng.normal(size=(3, 8, 8, 6)), jnp.float32)
    grads = jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) * g), argnums=(0, 1))
    grads_ref = jax.grad(
        lambda p, x: jnp.sum(ref.apply(p, jnp.concatenate([x, full[..., channels:]], -1)) * g),
        argnums=(0, 1),
    )
    for got, want in zip(
        jax.tree.leaves(grads(params, images)), jax.tree.leaves(grads_ref(params, images)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel,cin,cout", [(3, 5, 1), (3, 4, 2), (5, 3, 1)])
def test_narrow_conv_values_and_gradients_match_brute_force(kernel, cin, cout):
    """narrow_conv computes lax's stride-1 SAME conv; its custom kernel gradient (one
    product with the output gradient's shifted copies side by side) and input gradient
    equal the float64 brute force's: dw[i, j] = sum x_pad[u + i, v + j] g[u, v]."""
    rng = np.random.default_rng(kernel * 10 + cout)
    x = rng.normal(size=(2, 6, 7, cin))
    w = rng.normal(size=(kernel, kernel, cin, cout))
    g = rng.normal(size=(2, 6, 7, cout))
    y, vjp = jax.vjp(L.narrow_conv, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(y, _np_conv_same(x, w), atol=1e-4)
    dx, dw = vjp(jnp.asarray(g, jnp.float32))
    p = (kernel - 1) // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    dw_ref = np.zeros_like(w)
    dxp = np.zeros_like(xp)
    for i in range(kernel):
        for j in range(kernel):
            dw_ref[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i : i + 6, j : j + 7], g)
            dxp[:, i : i + 6, j : j + 7] += g @ w[i, j].T
    np.testing.assert_allclose(dw, dw_ref, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(dx, dxp[:, p : p + 6, p : p + 7], atol=1e-4, rtol=1e-5)


def test_narrow_conv_layer_is_flax_conv():
    """NarrowConv has flax.linen.Conv's parameters and output."""
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 8, 4)), jnp.float32)
    params = L.NarrowConv(1, 3).init(jax.random.key(1), x)
    ref = nn.Conv(1, (3, 3), padding="SAME")
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(0), x)
    )
    np.testing.assert_allclose(L.NarrowConv(1, 3).apply(params, x), ref.apply(params, x),
                               atol=1e-5)


# ----------------------------------------------------------------------------------------
# The LSTM.


def test_lstm_matches_float64_numpy_with_resets():
    rng = np.random.default_rng(5)
    t, b, i, h = 5, 2, 3, 4
    xs = rng.normal(size=(t, b, i)).astype(np.float32)
    resets = np.zeros((t, b), bool)
    resets[2, 1] = resets[0, 0] = True
    h0 = rng.normal(size=(b, h)).astype(np.float32)
    c0 = rng.normal(size=(b, h)).astype(np.float32)
    lstm = L.SonnetLSTM(h)
    state = L.LSTMState(hidden=jnp.asarray(h0), cell=jnp.asarray(c0))
    params = lstm.init(jax.random.key(0), xs, resets, state)
    outs, final = lstm.apply(params, xs, resets, state)

    w = np.asarray(params["params"]["w_gates"], np.float64)
    bias = np.asarray(params["params"]["b_gates"], np.float64)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    hp, cp = h0.astype(np.float64), c0.astype(np.float64)
    want = []
    for s in range(t):
        hp = np.where(resets[s][:, None], 0.0, hp)
        cp = np.where(resets[s][:, None], 0.0, cp)
        gates = np.concatenate([xs[s], hp], -1) @ w + bias
        gi, gj, gf, go = np.split(gates, 4, -1)
        cp = sig(gf + 1.0) * cp + sig(gi) * np.tanh(gj)
        hp = np.tanh(cp) * sig(go)
        want.append(hp)
    np.testing.assert_allclose(outs, np.stack(want), atol=1e-5)
    np.testing.assert_allclose(final.cell, cp, atol=1e-5)
    # Sonnet's LSTM initialiser: W and b both truncated normal, sd 1/sqrt(in + hidden).
    assert np.all(np.abs(w) <= 2.0 / math.sqrt(i + h) + 1e-7)
    assert np.any(bias != 0.0)


# ----------------------------------------------------------------------------------------
# The location decoder and its U-Net skips.


def _np_decoder(p: dict, z: np.ndarray, skips: tuple[np.ndarray, ...]) -> np.ndarray:
    """Float64 ConvDecoder: 3x3 conv, residual blocks (ReLU, 3x3, ReLU, 1x1, added), ReLU,
    then per stage a transposed conv plus the 1x1-projected skip, ReLU; a final 3x3 conv."""
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    conv = lambda x, q: _np_conv_same(x, np.asarray(q["kernel"], np.float64)) + np.asarray(  # noqa: E731
        q["bias"], np.float64)
    h = conv(z, p["pre_stack"])
    i = 0
    while f"res_3x3_{i}" in p["res"]:
        h = h + conv(relu(conv(relu(h), p["res"][f"res_3x3_{i}"])), p["res"][f"res_1x1_{i}"])
        i += 1
    h = relu(h)
    i = 0
    while f"strided_transpose_{i}" in p:
        q = p[f"strided_transpose_{i}"]
        h = _np_conv_transpose_4x4_s2(h, np.asarray(q["kernel"], np.float64)) + np.asarray(
            q["bias"], np.float64)
        if i < len(skips):
            h = h + conv(skips[i], p[f"skip_{i}"])
        h = relu(h)
        i += 1
    return conv(h, p["final"])


@pytest.mark.parametrize("num_skips", [0, 1, 2])
def test_decoder_with_skips_matches_float64_numpy(num_skips):
    """A 4x4 input decoded in two stages to 16x16; skip i (8x8, then 16x16) is added,
    projected by its 1x1 conv, to stage i's transposed conv before the ReLU."""
    rng = np.random.default_rng(num_skips)
    z = rng.normal(size=(2, 4, 4, 5))
    skips = tuple(rng.normal(size=(2, 8 * 2**i, 8 * 2**i, 7)) for i in range(num_skips))
    dec = L.ConvDecoder(channels=6, num_blocks=2, num_stages=2)
    params = dec.init(jax.random.key(1), jnp.asarray(z, jnp.float32),
                      tuple(jnp.asarray(s, jnp.float32) for s in skips))["params"]
    assert sorted(k for k in params if k.startswith("skip_")) == [
        f"skip_{i}" for i in range(num_skips)]
    # Random biases too, so that a misplaced bias would show.
    params = jax.tree.map(
        lambda a: a + jnp.asarray(rng.normal(scale=0.3, size=a.shape), jnp.float32), params)
    got = dec.apply({"params": params}, jnp.asarray(z, jnp.float32),
                    tuple(jnp.asarray(s, jnp.float32) for s in skips))
    want = _np_decoder(params, z, skips)
    assert got.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4)


def test_decoder_skip_of_the_wrong_size_raises():
    dec = L.ConvDecoder(channels=6, num_blocks=1, num_stages=2)
    z = jnp.zeros((1, 4, 4, 5))
    with pytest.raises(ValueError, match="skip 0 has shape"):
        dec.init(jax.random.key(0), z, (jnp.zeros((1, 16, 16, 7)),))
    with pytest.raises(ValueError, match="3 skips for a decoder of 2 stages"):
        dec.init(jax.random.key(0), z, (jnp.zeros((1, 8, 8, 7)),) * 3)


# ----------------------------------------------------------------------------------------
# Initialisers.


def test_sonnet_init_statistics():
    """Truncated normal (+-2 sd), sd 1/sqrt(fan_in), fan_in = all but the last axis."""
    w = np.asarray(L.sonnet_init()(jax.random.key(3), (3, 3, 16, 32)), np.float64)
    assert abs(w.std() * math.sqrt(3 * 3 * 16) / TRUNC_SD - 1.0) < 0.06
    assert np.all(np.abs(w) <= 2.0 / math.sqrt(3 * 3 * 16))
    # An explicit fan-in (the LSTM's: input + hidden) overrides the shape's.
    v = np.asarray(L.sonnet_init(100)(jax.random.key(4), (60, 200)), np.float64)
    assert abs(v.std() * math.sqrt(100) / TRUNC_SD - 1.0) < 0.06
    assert np.all(np.abs(v) <= 2.0 / math.sqrt(100))


def test_init_from_one_draw_follows_sonnet_std():
    """One truncated-normal draw cut into the tree: each leaf scaled by `sonnet_std`
    (kernels 1/sqrt(fan_in), biases zero, LSTM gate bias 1/sqrt(its weight's rows))."""
    shapes = {
        "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.float32),
                 "bias": jax.ShapeDtypeStruct((32,), jnp.float32)},
        "lstm": {"w_gates": jax.ShapeDtypeStruct((96, 256), jnp.float32),
                 "b_gates": jax.ShapeDtypeStruct((4096,), jnp.float32)},
    }
    params = L.init_from_one_draw(shapes, jax.random.key(0), L.sonnet_std)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
        lambda s: (s.shape, s.dtype), shapes)
    assert np.all(np.asarray(params["conv"]["bias"]) == 0.0)
    for leaf, fan in ((params["conv"]["kernel"], 3 * 3 * 16), (params["lstm"]["w_gates"], 96),
                      (params["lstm"]["b_gates"], 96)):
        x = np.asarray(leaf, np.float64)
        assert abs(x.std() * math.sqrt(fan) / TRUNC_SD - 1.0) < 0.06
        assert np.all(np.abs(x) <= 2.0 / math.sqrt(fan) + 1e-7)
    with pytest.raises(ValueError, match="no Sonnet initialiser"):
        L.init_from_one_draw({"scale": jax.ShapeDtypeStruct((3,), jnp.float32)},
                             jax.random.key(0), L.sonnet_std)


@pytest.mark.parametrize("width, base, stages", [(8, 8, 0), (16, 8, 1), (64, 8, 3), (32, 4, 3)])
def test_log2_stages(width, base, stages):
    assert L.log2_stages(width, base, "canvas width") == stages


@pytest.mark.parametrize("width", [4, 12, 24, 48])
def test_log2_stages_rejects_other_widths(width):
    with pytest.raises(ValueError, match=f"canvas width must be 8 \\* 2\\^k.*got {width}"):
        L.log2_stages(width, 8, "canvas width")
