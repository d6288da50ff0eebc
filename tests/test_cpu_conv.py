"""The CPU-arranged convolutions' kernel gradients (spiral_jax.cpu_conv) against a
float64 numpy brute force of the sums that define them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import cpu_conv


def _np_same_pad(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Pads as a stride-1 SAME conv does: (k - 1) // 2 before, k // 2 after."""
    return np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))


def _np_conv_same_and_grads(x, w, g):
    """y = SAME stride-1 conv(x, w) and the vjp of g, summed term by term in float64:
    y[u, v] = sum_ij xp[u + i, v + j] w[i, j]."""
    kh, kw = w.shape[:2]
    n, h, wd, _ = x.shape
    xp = _np_same_pad(x, kh, kw)
    y = np.zeros((n, h, wd, w.shape[-1]))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i : i + h, j : j + wd]
            y += window @ w[i, j]
            dw[i, j] = np.einsum("nhwc,nhwo->co", window, g)
            dxp[:, i : i + h, j : j + wd] += g @ w[i, j].T
    p, q = (kh - 1) // 2, (kw - 1) // 2
    return y, dxp[:, p : p + h, q : q + wd], dw


def _check_against_brute_force(conv, x, w, g):
    """conv(x, w) and its vjp of g, in float32, against `_np_conv_same_and_grads`."""
    y, vjp = jax.vjp(conv, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    for got, want in zip((y, *vjp(jnp.asarray(g, jnp.float32))),
                         _np_conv_same_and_grads(x, w, g), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


# Kernels odd and even, square and not; C_in below, equal to and above C_out (the
# ways valid_kernel_grad slices: the input per tap, the output gradient per tap, and
# all the output gradient's shifts in one product, up to `_CONCAT_COLUMNS`, 64, of them:
# (3, 3, 16, 8) has 72); images not square.
@pytest.mark.parametrize(
    "kh,kw,cin,cout", [(3, 3, 2, 7), (3, 3, 6, 6), (5, 5, 3, 4), (1, 1, 5, 3), (4, 2, 6, 2),
                       (3, 3, 9, 1), (3, 3, 12, 5), (3, 3, 16, 8)]
)
def test_conv_same_values_and_gradients_match_float64_brute_force(kh, kw, cin, cout):
    rng = np.random.default_rng(kh * 100 + kw * 10 + cin)
    x = rng.normal(size=(3, 6, 5, cin))
    w = rng.normal(size=(kh, kw, cin, cout))
    g = rng.normal(size=(3, 6, 5, cout))
    _check_against_brute_force(cpu_conv.conv_same, x, w, g)


@pytest.mark.parametrize("kh,kw,cin,cout", [(3, 3, 16, 1), (3, 3, 5, 2), (5, 5, 3, 4), (4, 2, 6, 2),
                                            (1, 1, 5, 3), (3, 3, 2, 7)])
def test_narrow_conv_values_and_gradients_match_float64_brute_force(kh, kw, cin, cout):
    rng = np.random.default_rng(kh * 100 + kw * 10 + cout)
    x, g = rng.normal(size=(3, 6, 5, cin)), rng.normal(size=(3, 6, 5, cout))
    w = rng.normal(size=(kh, kw, cin, cout))
    _check_against_brute_force(cpu_conv.narrow_conv, x, w, g)


# Blocks of 4 columns (one or two channels), of 2 (up to eight), and none (more
# channels, an even kernel, a width the block does not divide); a 7-wide kernel reads
# 3 columns of each neighbouring block.
@pytest.mark.parametrize("kh,kw,cin,cout,width,block", [
    (5, 5, 1, 4, 8, 4), (5, 5, 2, 3, 12, 4), (3, 7, 1, 2, 8, 4), (5, 5, 3, 4, 6, 2),
    (3, 3, 8, 2, 10, 2), (5, 5, 9, 2, 8, 1), (4, 4, 1, 2, 8, 1), (5, 5, 1, 2, 7, 1)])
def test_conv_few_channels_values_and_gradients_match_float64_brute_force(
        kh, kw, cin, cout, width, block):
    assert cpu_conv.column_block((3, 5, width, cin), (kh, kw, cin, cout)) == block
    rng = np.random.default_rng(kh * 100 + kw * 10 + cin)
    x, g = rng.normal(size=(3, 5, width, cin)), rng.normal(size=(3, 5, width, cout))
    w = rng.normal(size=(kh, kw, cin, cout))
    _check_against_brute_force(cpu_conv.conv_few_channels, x, w, g)


@pytest.mark.parametrize("cin,cout,height,width", [(3, 5, 8, 6), (8, 2, 8, 6), (3, 5, 16, 18),
                                                    (8, 5, 16, 18), (9, 2, 18, 16)])
def test_strided_conv_kernel_gradient_matches_float64_brute_force(cin, cout, height, width):
    """dw[ky, kx] = sum over n, i, j of x[2i + ky - 1, 2j + kx - 1] g[i, j] (zero
    outside the image), for the 4x4 stride-2 SAME conv, through its custom vjp; in both
    forms (`_ROW_PAIRS_MIN_PIXELS`, `_ROW_PAIRS_MIN_CHANNELS`)."""
    assert 8 * 6 < cpu_conv._ROW_PAIRS_MIN_PIXELS <= 16 * 18  # both forms are tested
    assert 3 < cpu_conv._ROW_PAIRS_MIN_CHANNELS <= 8
    rng = np.random.default_rng(cin * 10 + cout + height)
    x = rng.normal(size=(2, height, width, cin))
    w = rng.normal(size=(4, 4, cin, cout))
    g = rng.normal(size=(2, height // 2, width // 2, cout))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dw_ref = np.zeros_like(w)
    for ky in range(4):
        for kx in range(4):
            window = xp[:, ky : ky + height : 2, kx : kx + width : 2]
            dw_ref[ky, kx] = np.einsum("nhwc,nhwo->co", window, g)
    got = cpu_conv.strided_kernel_grad(jnp.asarray(x, jnp.float32),
                                       jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(got, dw_ref, atol=1e-4, rtol=1e-5)
    _, vjp = jax.vjp(cpu_conv.conv_4x4_s2, jnp.asarray(x, jnp.float32),
                     jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[1], dw_ref, atol=1e-4,
                               rtol=1e-5)


def test_transposed_conv_kernel_gradient_matches_autodiff_of_lax():
    """The transposed conv's custom vjp (a strided conv for the input, products over
    the output gradient's phases for the kernel) gives lax.conv_transpose's input and
    kernel gradients, on images not square."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 4, 5, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, 3, 6)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 8, 10, 6)), jnp.float32)
    _, vjp_fast = jax.vjp(cpu_conv.conv_transpose_4x4_s2, x, w)
    _, vjp_ref = jax.vjp(lambda x, w: jax.lax.conv_transpose(
        x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
    for got, want in zip(vjp_fast(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("first,stride,size,same", [
    (cpu_conv.conv_4x4_s2, 2, 4, cpu_conv.conv_same),
    (cpu_conv.conv_few_channels, 1, 5, cpu_conv.narrow_conv)])
def test_second_order_gradients_match_lax(first, stride, size, same):
    """The critic's gradient penalty differentiates an input gradient with respect to
    the kernel: through these custom vjps it equals the same through lax's convs."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 2)), jnp.float32)
    w1 = jnp.asarray(rng.normal(size=(size, size, 2, 4)) * 0.3, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(3, 3, 4, 2)) * 0.3, jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def penalty(strided, same):
        def critic(x, w1, w2):
            return jnp.sum(jnp.tanh(same(jax.nn.relu(strided(x, w1)), w2)))

        def gp(w1, w2):
            return jnp.sum(jax.grad(critic)(x, w1, w2) ** 2)

        return jax.grad(gp, argnums=(0, 1))(w1, w2)

    got = penalty(first, same)
    want = penalty(lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                                             dimension_numbers=dn),
                   lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=dn))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_valid_kernel_grad_rejects_a_mismatched_output_gradient():
    with pytest.raises(ValueError, match=r"does not fit input \(2, 6, 6, 3\) and a 3x3"):
        cpu_conv.valid_kernel_grad(jnp.zeros((2, 6, 6, 3)), jnp.zeros((2, 5, 4, 1)), 3, 3)


def test_gradients_keep_a_bfloat16_compute_dtype():
    """With the agent's bfloat16 compute dtype, the custom vjps return gradients in
    the primal's dtype (their products accumulate in float32)."""
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.uniform(size=(2, 4, 4, 3)), jnp.bfloat16)
    for conv, shape in ((cpu_conv.conv_transpose_4x4_s2, (4, 4, 3, 5)),
                        (cpu_conv.conv_4x4_s2, (4, 4, 3, 5)),
                        (cpu_conv.narrow_conv, (3, 3, 3, 1)),
                        (cpu_conv.conv_few_channels, (5, 5, 3, 2))):
        kernel = jnp.asarray(rng.uniform(size=shape), jnp.bfloat16)
        loss = lambda x, k: jnp.sum(conv(x, k).astype(jnp.float32) ** 2)  # noqa: B023, E731
        dx, dk = jax.grad(loss, argnums=(0, 1))(x, kernel)
        assert (dx.dtype, dk.dtype) == (jnp.bfloat16, jnp.bfloat16), conv
        want = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.float32), kernel.astype(jnp.float32))
        for got, ref in zip((dx, dk), want, strict=True):
            np.testing.assert_allclose(got.astype(jnp.float32), ref, rtol=3e-2, atol=3e-2)


def _np_relu_of_sum_and_grads(h, pos, img, g):
    """relu(h + pos + img) and its vjp of g, in float64: the mask, then the sums of the
    masked gradient over the batch (pos's) and over the positions (img's)."""
    s = h + pos[None] + img[:, None, None, :]
    gm = g * (s > 0)
    return np.maximum(s, 0), gm, gm.sum(0), gm.sum((1, 2))


def test_broadcast_adds_and_their_sums_match_float64():
    rng = np.random.default_rng(5)
    h, g = rng.normal(size=(2, 7, 6, 5, 3))
    pos, img = rng.normal(size=(6, 5, 3)), rng.normal(size=(7, 3))
    f32 = lambda *a: [jnp.asarray(x, jnp.float32) for x in a]  # noqa: E731
    y, gm, dpos, dimg = _np_relu_of_sum_and_grads(h, pos, img, g)
    assert (gm == 0).mean() > 0.3  # the mask matters

    out, vjp = jax.vjp(cpu_conv.relu_of_sum, *f32(h, pos, img))
    np.testing.assert_allclose(out, y, atol=1e-6)
    for got, want in zip(vjp(*f32(g)), (gm, dpos, dimg), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    out, vjp = jax.vjp(cpu_conv.add_offsets, *f32(h, pos, img))
    np.testing.assert_allclose(out, h + pos[None] + img[:, None, None], atol=1e-6)
    for got, want in zip(vjp(*f32(g)), (g, g.sum(0), g.sum((1, 2))), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    bias = rng.normal(size=3)
    out, vjp = jax.vjp(cpu_conv.add_bias, *f32(h, bias))
    np.testing.assert_allclose(out, h + bias, atol=1e-6)
    dh, db = vjp(*f32(g))
    np.testing.assert_allclose(dh, g, atol=0)
    np.testing.assert_allclose(db, g.sum((0, 1, 2)), rtol=1e-5, atol=1e-5)
    assert db.dtype == jnp.float32


def test_relu_of_sum_under_vmap_and_second_order_matches_plain_jax():
    """The materialized mask (a conditional) under vmap, and differentiated twice, as a
    population and the critic's gradient penalty would."""
    rng = np.random.default_rng(6)
    h = jnp.asarray(rng.normal(size=(3, 4, 5, 5, 2)), jnp.float32)
    pos = jnp.asarray(rng.normal(size=(3, 5, 5, 2)), jnp.float32)
    img = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)
    plain = lambda h, p, i: jax.nn.relu(h + p[None] + i[:, None, None])  # noqa: E731

    def loss(f, h, p, i):
        return jnp.sum(jnp.sin(f(h, p, i)))

    def penalty(f, h, p, i):  # the norm of a gradient, differentiated again
        return jnp.sum(jax.grad(loss, argnums=1)(f, h, p, i) ** 2)

    for fn in (loss, penalty):
        want = jax.vmap(jax.grad(fn, argnums=(1, 2, 3)), (None, 0, 0, 0))(plain, h, pos, img)
        got = jax.vmap(jax.grad(fn, argnums=(1, 2, 3)), (None, 0, 0, 0))(
            cpu_conv.relu_of_sum, h, pos, img
        )
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    # vmap keeps the conditional (its predicate is not batched): both branches are
    # not computed for every member.
    grads = jax.vmap(jax.grad(lambda h, p, i: loss(cpu_conv.relu_of_sum, h, p, i)))
    assert "cond[" in str(jax.make_jaxpr(grads)(h, pos, img))
