"""Convolutions that compute exactly what `lax.conv_general_dilated` and
`lax.conv_transpose` compute, with gradients arranged for XLA's CPU backend.

Five things are slow there (docs/speed.md):

* Input-dilated convolutions (a transposed conv, or a strided conv's input gradient):
  the 4x4 stride-2 transposed conv is computed as a stride-1 2x2 conv to its four
  output phases plus depth-to-space (`conv_transpose_4x4_s2`), and the strided conv's
  input gradient that way too (`conv_4x4_s2`).
* Kernel gradients: XLA computes one as a convolution over a copy of the input with
  the batch dimension last, a strided gather that it fuses with the input's producer.
  For the encoder's first strided conv (the learner's largest activations) that copy
  took about a fifth of the learner's operation time. A kernel gradient is a sum over
  the batch and the positions, so here it is one matrix product per kernel tap over the
  flattened, padded grid (`valid_kernel_grad`): the input is read as it is stored, and only the
  narrower of input and output gradient is copied, shifted, per tap. This pays where
  the input is wide and large (the strided convs, `strided_kernel_grad`) or the
  output narrow (`narrow_conv`), and for the transposed conv's 2x2 conv; for the
  torso's 5x5 conv of the canvas and the 3x3 convs of the residual stacks XLA's own
  kernel gradient was faster, and they keep it (docs/speed.md).
* Large reductions (the gradients of a bias, or of terms broadcast over the batch or
  the positions): XLA splits them into a slow windowed reduction first; here they are
  products with a vector of ones (`add_bias`, `add_offsets`, `relu_of_sum`).
* Convolutions from or to one channel (the torso's conv of the canvas, the decoders'
  final conv to a logit, and its input gradient) ran at 5-13 GFLOP/s:
  `conv_few_channels` convolves blocks of columns instead, and `narrow_conv` is one
  product with all taps' matrices side by side plus shifted adds.
* An elementwise result with several consumers: XLA fuses it into each and computes
  it again in each. Where that was large (the torso's ReLU gradient at 64x64, three
  consumers), `materialized` computes it once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax.types import Array

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, kernel: Array, stride: int) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=_DN)


# Up to this many output-gradient columns over all taps, valid_kernel_grad makes one
# product of all the shifted copies side by side: a product with a few columns is
# bound by reading the input, and the decoders' final conv (one channel, 9 taps) then
# reads it once instead of 9 times (its kernel gradient went from 187 to 21 ms a
# learner call in a profile; docs/speed.md). At 64 the mnist5k agent's strided convs
# (16 channels, 4 taps) take one product too: 13.7 against 18.3 ms for the first one's
# kernel gradient at its learner's size; at 128 (the paper agent's) it made no
# difference.
_CONCAT_COLUMNS = 64


def _dot_over_rows(a: Array, b: Array) -> Array:
    """a [K, M], b [K, N] -> a^T b [M, N], accumulated in float32."""
    return jax.lax.dot_general(
        a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )


def valid_kernel_grad(xp: Array, g: Array, kh: int, kw: int) -> Array:
    """The kernel gradient [kh, kw, C_in, C_out] of y = VALID stride-1 conv(xp, w).

    dw[i, j] = sum over n, u, v of xp[n, u + i, v + j] g[n, u, v]. With g zero-padded
    to xp's grid and both flattened to rows (n, u, v), tap (i, j) pairs row k of g
    with row k + i * W + j of xp, and no valid pair crosses an image's edge (the
    padding is zero there), so each tap is one product over rows of xp's and g's
    contiguous row ranges. For a narrow output gradient, the per-tap shifts are
    concatenated into one product (`_CONCAT_COLUMNS`).
    """
    n, hp, wp, ci = xp.shape
    co = g.shape[-1]
    if g.shape[:3] != (n, hp - kh + 1, wp - kw + 1):
        raise ValueError(f"output gradient {g.shape} does not fit input {xp.shape} and a "
                         f"{kh}x{kw} VALID conv")
    rows = n * hp * wp
    xf = xp.reshape(rows, ci)
    gf = jnp.pad(g, ((0, 0), (0, kh - 1), (0, kw - 1), (0, 0))).reshape(rows, co)
    max_offset = (kh - 1) * wp + kw - 1
    offsets = [i * wp + j for i in range(kh) for j in range(kw)]
    if ci <= co:
        # Slice the input per tap. g's last non-zero row is rows - max_offset - 1.
        g_rows = gf[: rows - max_offset]
        taps = [_dot_over_rows(xf[o : o + rows - max_offset], g_rows) for o in offsets]
        return jnp.stack(taps).reshape(kh, kw, ci, co)
    # Shift the (narrower) output gradient per tap: shifted[k] = g[k - o].
    g_front = jnp.pad(gf, ((max_offset, 0), (0, 0)))
    shifted = [g_front[max_offset - o : max_offset - o + rows] for o in offsets]
    if co * len(offsets) <= _CONCAT_COLUMNS:
        dw = _dot_over_rows(xf, jnp.concatenate(shifted, axis=1))  # [ci, taps * co]
        return dw.reshape(ci, kh, kw, co).transpose(1, 2, 0, 3)
    taps = [_dot_over_rows(xf, s) for s in shifted]
    return jnp.stack(taps).reshape(kh, kw, ci, co)


def _pad_same(x: Array, kh: int, kw: int) -> Array:
    """x padded as a stride-1 SAME conv pads it (the extra row or column after)."""
    return jnp.pad(
        x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0))
    )


@jax.custom_vjp
def conv_same(x: Array, kernel: Array) -> Array:
    """A stride-1 SAME convolution (NHWC, HWIO) whose kernel gradient is
    `valid_kernel_grad`. Values and gradients are those of `lax.conv_general_dilated`."""
    return _conv(x, kernel, 1)


def _conv_same_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return conv_same(x, kernel), (x, kernel)


def _conv_same_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    kh, kw = kernel.shape[:2]
    _, vjp_x = jax.vjp(lambda x: _conv(x, kernel, 1), x)
    dw = valid_kernel_grad(_pad_same(x, kh, kw), g.astype(x.dtype), kh, kw)
    return vjp_x(g)[0], dw.astype(kernel.dtype)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)

def _taps_side_by_side(kernel: Array) -> Array:
    """[kh, kw, C_in, C_out] -> [C_in, kh * kw * C_out]: each tap's matrix side by side."""
    kh, kw, ci, co = kernel.shape
    return jnp.moveaxis(kernel, 2, 0).reshape(ci, kh * kw * co)


@jax.custom_vjp
def narrow_conv(x: Array, kernel: Array) -> Array:
    """A stride-1 SAME conv (NHWC, HWIO) to a few output channels, such as the
    decoders' final conv to one logit per cell: `conv_same`'s function and gradients.

    XLA's CPU convolution runs such a conv, and its input gradient (a conv from a few
    channels), at about 5 GFLOP/s. Here both are one matrix product: the forward
    multiplies every position by all taps' matrices at once (C_out columns per tap)
    and adds the taps' narrow results, each shifted to where it lands; the input
    gradient multiplies the output gradient's shifted copies, side by side, by the
    taps' transposed matrices.
    """
    kh, kw, _, co = kernel.shape
    n, h, w, ci = x.shape
    z = jnp.dot(x.reshape(-1, ci), _taps_side_by_side(kernel)).reshape(n, h, w, kh * kw * co)
    zp = _pad_same(z, kh, kw)  # out[u, v] = sum over taps of x[u + i - ph, v + j - pw] w[i, j]
    taps = [zp[:, i : i + h, j : j + w, (i * kw + j) * co : (i * kw + j + 1) * co]
            for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, taps)


def _narrow_conv_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return narrow_conv(x, kernel), (x, kernel)


def _narrow_conv_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    kh, kw, ci, co = kernel.shape
    n, h, w, _ = x.shape
    g = g.astype(x.dtype)
    # dx[u, v] = sum over taps of g[u - i + ph, v - j + pw] w[i, j]^T: padded so that
    # tap (i, j)'s copy starts at (kh - 1 - i, kw - 1 - j).
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    gp = jnp.pad(g, ((0, 0), (kh - 1 - ph, ph), (kw - 1 - pw, pw), (0, 0)))
    shifted = jnp.concatenate([gp[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w]
                               for i in range(kh) for j in range(kw)], axis=-1)
    w_t = jnp.swapaxes(kernel, 2, 3).reshape(kh * kw * co, ci).astype(x.dtype)
    dx = jnp.dot(shifted.reshape(-1, kh * kw * co), w_t).reshape(n, h, w, ci)
    dw = valid_kernel_grad(_pad_same(x, kh, kw), g, kh, kw)
    return dx, dw.astype(kernel.dtype)


narrow_conv.defvjp(_narrow_conv_fwd, _narrow_conv_bwd)


def column_block(image_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> int:
    """How many columns `conv_few_channels` puts in a block for these shapes (1: none).

    Measured at the torso's sizes (docs/speed.md): 4 columns for one or two channels,
    2 for up to eight; an odd kernel no more than twice the block's width plus one
    (so that a block's outputs read only it and its two neighbours)."""
    width, channels = image_shape[2], image_shape[3]
    kh, kw = kernel_shape[:2]
    if kh % 2 == 0 or kw % 2 == 0:
        return 1
    for block, max_channels in ((4, 2), (2, 8)):
        if channels <= max_channels and width % block == 0 and kw // 2 <= block:
            return block
    return 1


def _block_kernel(kernel: Array, block: int) -> Array:
    """The kernel of the conv over blocks of `block` columns: [kh, 3, block * C_in,
    block * C_out], block tap b (the block before, the same, the one after) taking
    column c of its block to output column p through the original tap
    j = block * (b - 1) + c - p + kw // 2, where that is a tap (zero elsewhere)."""
    kh, kw, ci, co = kernel.shape
    select = np.zeros((kw, 3, block, block), np.float32)
    for b in range(3):
        for c in range(block):
            for p in range(block):
                j = block * (b - 1) + c - p + kw // 2
                if 0 <= j < kw:
                    select[j, b, c, p] = 1.0
    blocked = jnp.einsum("jbcp,ijxf->ibcxpf", select.astype(kernel.dtype), kernel)
    return blocked.reshape(kh, 3, block * ci, block * co)


@jax.custom_vjp
def conv_few_channels(x: Array, kernel: Array) -> Array:
    """A stride-1 SAME conv (NHWC, HWIO) of images with a few channels, such as the
    torso's 5x5 conv of the canvas: `lax.conv_general_dilated`'s function and
    gradients.

    XLA's CPU convolution runs a conv from one channel at about 13 GFLOP/s. Taking
    `column_block` columns as one position (a free reshape, in both the input and the
    output) makes it a conv from block * C_in to block * C_out channels with a 3-wide
    kernel, which ran 1.3-2.5x as fast although it multiplies by zeros too
    (`experiments.bench_convs`). The gradients are XLA's.
    """
    n, h, w, ci = x.shape
    kh, _, _, co = kernel.shape
    block = column_block(x.shape, kernel.shape)
    if block == 1:
        return _conv(x, kernel, 1)
    y = jax.lax.conv_general_dilated(
        x.reshape(n, h, w // block, block * ci), _block_kernel(kernel, block), (1, 1),
        ((kh // 2, kh // 2), (1, 1)), dimension_numbers=_DN)
    return y.reshape(n, h, w, co)


def _conv_few_channels_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return conv_few_channels(x, kernel), (x, kernel)


def _conv_few_channels_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    _, vjp = jax.vjp(lambda x, k: _conv(x, k, 1), x, kernel)
    return vjp(g.astype(x.dtype))


conv_few_channels.defvjp(_conv_few_channels_fwd, _conv_few_channels_bwd)


# lax.conv_transpose (stride 2, SAME, a 4x4 kernel) sends input i through tap k to
# output 2i + 2 - k, so output 2m + p reads input m + a - 1 + p through tap 2a + p
# (a = 0, 1): each output phase p is a 2-tap conv of the input.


def _phase_kernel(kernel: Array) -> Array:
    """[4, 4, Ci, Co] transposed-conv kernel -> [2, 2, Ci, 4 * Co], tap (2a + p, 2b + q)
    to position (a, b) and output channels (p, q, Co)."""
    ci, co = kernel.shape[2], kernel.shape[3]
    phases = kernel.reshape(2, 2, 2, 2, ci, co).transpose(0, 2, 4, 1, 3, 5)
    return phases.reshape(2, 2, ci, 4 * co)


def _phase_kernel_inverse(sub: Array) -> Array:
    """[2, 2, Ci, 4 * Co] -> [4, 4, Ci, Co], the inverse of `_phase_kernel`."""
    ci, co = sub.shape[2], sub.shape[3] // 4
    return sub.reshape(2, 2, ci, 2, 2, co).transpose(0, 3, 1, 4, 2, 5).reshape(4, 4, ci, co)


def conv_transpose_4x4_s2(x: Array, kernel: Array) -> Array:
    """`lax.conv_transpose(x, kernel, (2, 2), "SAME")` for a 4x4 kernel, in the kernel's
    dtype; see `_conv_transpose_4x4_s2`."""
    return _conv_transpose_4x4_s2(x.astype(kernel.dtype), kernel)


@jax.custom_vjp
def _conv_transpose_4x4_s2(x: Array, kernel: Array) -> Array:
    """The transposed conv as one 2x2 VALID conv of the padded input to its four output
    phases' channels, (H + 1) x (W + 1) positions, of which phase (p, q) keeps rows
    p.. p + H - 1 and columns q.. q + W - 1, interleaved (depth-to-space).

    The same function as `lax.conv_transpose` (tested against Flax's ConvTranspose and
    a numpy brute force), but XLA's CPU backend runs the input-dilated convolution
    that `conv_transpose` lowers to, and its kernel gradient, 4-5x slower. The 2x2
    form does the 16 taps' work a 3x3 sub-pixel conv to 4 * C_out channels would do
    in 36 (docs/speed.md). Its input gradient is the 4x4 stride-2 conv of the output
    gradient with the kernel flipped, and its kernel gradient `valid_kernel_grad` over
    the output gradient's phases.
    """
    n, h, w, _ = x.shape
    co = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        xp, _phase_kernel(kernel), (1, 1), "VALID", dimension_numbers=_DN
    ).reshape(n, h + 1, w + 1, 2, 2, co)
    # Depth-to-space as a sum of the phases, each spread out by a pad with interior
    # (zero) padding: XLA's CPU backend fuses it into one pass at about copying speed,
    # where stacking the phases (a concatenate) took twice as long (docs/speed.md).
    out = jnp.zeros((), y.dtype)
    for p in range(2):
        for q in range(2):
            phase = y[:, p : p + h, q : q + w, p, q]
            out = out + jax.lax.pad(
                phase, jnp.zeros((), y.dtype), ((0, 0, 0), (p, 1 - p, 1), (q, 1 - q, 1), (0, 0, 0))
            )
    return out


def _conv_transpose_4x4_s2_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv_transpose_4x4_s2(x, kernel), (x, kernel)


def _conv_transpose_4x4_s2_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    n, h, w, _ = x.shape
    co = kernel.shape[-1]
    # out[2m + p] = sum_a x[m + a - 1 + p] k[2a + p]  =>  dx[j] = sum_i g[2j + i - 1]
    # k[3 - i]: a strided conv of g with the kernel flipped and in/out swapped.
    dx = _conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), 2)
    # The 2x2 conv's output gradient: phase (p, q) of g where the forward kept it.
    g = g.reshape(n, h, 2, w, 2, co)
    pad = lambda p, q: ((0, 0), (p, 1 - p), (q, 1 - q), (0, 0))  # noqa: E731
    rows = [jnp.stack([jnp.pad(g[:, :, p, :, q], pad(p, q)) for q in range(2)], 3) for p in (0, 1)]
    gy = jnp.stack(rows, axis=3).reshape(n, h + 1, w + 1, 4 * co)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dk = _phase_kernel_inverse(valid_kernel_grad(xp, gy, 2, 2))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_transpose_4x4_s2.defvjp(_conv_transpose_4x4_s2_fwd, _conv_transpose_4x4_s2_bwd)


def conv_4x4_s2(x: Array, kernel: Array) -> Array:
    """A 4x4, stride-2, SAME convolution in the kernel's dtype; see `_conv_4x4_s2`."""
    return _conv_4x4_s2(x.astype(kernel.dtype), kernel)


# Inputs of fewer pixels or channels than these take `_space_to_depth_kernel_grad`.
_ROW_PAIRS_MIN_PIXELS = 16 * 16
_ROW_PAIRS_MIN_CHANNELS = 8


def strided_kernel_grad(x: Array, g: Array) -> Array:
    """The kernel gradient [4, 4, C_in, C_out] of a 4x4 stride-2 SAME conv.

    SAME pads one row and column on each side. Padded row 2i + r is input row
    2i + r - 1, so the padded input's rows of parity r = 0 are a zero row and the odd
    input rows, those of r = 1 the even input rows and a zero row: each a copy of whole
    rows (`x[:, 1::2]`, padded). Read as pairs of columns (a free reshape), each is the
    input of a 2x2 VALID stride-1 conv with 2 C_in channels, whose kernel gradient is
    `valid_kernel_grad`; kernel row 2 dy + r, column 2 dx + s reads pair row i + dy,
    pair column j + dx, column s within the pair. (A space-to-depth copy of the padded
    input did the same with one product, but its copy moves runs of only C_in values
    and was 1.1-1.6x slower for the agents' maps. For inputs smaller than 16x16 or of
    fewer than 8 channels, such as D's 8x8 conv and its conv of the image, its single
    product wins, and it stays for those: `experiments.bench_convs`.)
    """
    g = g.astype(x.dtype)
    if takes_row_pairs(x.shape):
        return _row_pairs_kernel_grad(x, g)
    return _space_to_depth_kernel_grad(x, g)


def takes_row_pairs(input_shape: tuple[int, ...]) -> bool:
    """Whether `strided_kernel_grad` takes row pairs for an NHWC input of this shape."""
    _, h, w, ci = input_shape
    return h * w >= _ROW_PAIRS_MIN_PIXELS and ci >= _ROW_PAIRS_MIN_CHANNELS


def _row_pairs_kernel_grad(x: Array, g: Array) -> Array:
    """`strided_kernel_grad` over the padded input's rows of each parity (above)."""
    n, h, w, ci = x.shape
    co = g.shape[-1]
    odd = jnp.pad(x[:, 1::2], ((0, 0), (1, 0), (1, 1), (0, 0)))  # padded rows r = 0
    even = jnp.pad(x[:, 0::2], ((0, 0), (0, 1), (1, 1), (0, 0)))  # padded rows r = 1
    shape = (n, h // 2 + 1, w // 2 + 1, 2 * ci)
    dw = jnp.stack([valid_kernel_grad(rows.reshape(shape), g, 2, 2) for rows in (odd, even)])
    dw = dw.reshape(2, 2, 2, 2, ci, co)  # r, dy, dx, s
    return dw.transpose(1, 0, 2, 3, 4, 5).reshape(4, 4, ci, co)


def _space_to_depth_kernel_grad(x: Array, g: Array) -> Array:
    """`strided_kernel_grad` over 2x2 blocks of the padded input (space-to-depth): a
    2x2 VALID conv with 4 C_in channels, one `valid_kernel_grad`."""
    n, h, w, ci = x.shape
    co = g.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hs, ws = h // 2 + 1, w // 2 + 1
    blocks = xp.reshape(n, hs, 2, ws, 2, ci).transpose(0, 1, 3, 2, 4, 5)
    dw = valid_kernel_grad(blocks.reshape(n, hs, ws, 4 * ci), g, 2, 2)
    dw = dw.reshape(2, 2, 2, 2, ci, co)  # dy, dx, r, s
    return dw.transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, ci, co)


@jax.custom_vjp
def _conv_4x4_s2(x: Array, kernel: Array) -> Array:
    """A 4x4, stride-2, SAME convolution (NHWC, even H and W).

    Its input gradient is a stride-2 transposed convolution, computed with
    `conv_transpose_4x4_s2`: XLA's CPU backend runs the default (input-dilated) one
    about 5x slower. Its kernel gradient is `strided_kernel_grad`. Values and
    gradients are those of `lax.conv_general_dilated`.
    """
    return _conv(x, kernel, 2)


def _conv_4x4_s2_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv_4x4_s2(x, kernel), (x, kernel)


def _conv_4x4_s2_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    # y[i] = sum_k x[2i + k - 1] w[k]  =>  dx[j] = sum over 2i + k - 1 = j of g[i] w[k],
    # a transposed conv of g with the kernel flipped in space and in/out swapped.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = conv_transpose_4x4_s2(g, flipped)
    return dx, strided_kernel_grad(x, g).astype(kernel.dtype)


_conv_4x4_s2.defvjp(_conv_4x4_s2_fwd, _conv_4x4_s2_bwd)


# Sums over the batch and the positions (the gradients of biases and other terms
# broadcast over them). XLA's CPU backend splits a large reduction into a windowed
# reduction (reduce-window) and a small one, and the windowed part ran at about a
# quarter of memory speed: in the paper learner the torso's three such gradients of
# its 64x64 maps took about 100 ms a call. A product with a vector of ones reads the
# same data once, at memory speed (docs/speed.md).


def sum_over_batch(g: Array) -> Array:
    """g [N, ...] summed over its first axis (in float32), as ones[N] @ g."""
    n = g.shape[0]
    s = jax.lax.dot_general(
        jnp.ones((n,), g.dtype), g.reshape(n, -1), (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return s.reshape(g.shape[1:])


def sum_over_positions(g: Array) -> Array:
    """g [N, H, W, C] summed over H and W (in float32) -> [N, C], one product with a
    vector of ones per image."""
    n, h, w, c = g.shape
    ones = jnp.ones((n, 1, h * w), g.dtype)
    s = jax.lax.dot_general(
        ones, g.reshape(n, h * w, c), (((2,), (1,)), ((0,), (0,))),
        preferred_element_type=jnp.float32,
    )
    return s.reshape(n, c)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
    """y [N, ..., C] + bias [C], the bias's gradient a product with ones
    (`sum_over_batch`) rather than XLA's windowed reduction."""
    return y + bias


def _add_bias_fwd(y: Array, bias: Array) -> tuple[Array, Array]:
    return add_bias(y, bias), bias


def _add_bias_bwd(bias: Array, g: Array) -> tuple[Array, Array]:
    per_position = sum_over_batch(g).reshape(-1, bias.shape[-1])
    return g, per_position.sum(0).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def materialized(fn: Callable[..., Array], *args: Array) -> Array:
    """fn(*args), computed into a buffer of its own.

    XLA's CPU backend fuses an elementwise producer into each of its consumers and
    recomputes it in each: the torso's ReLU gradient at 64x64 (with the depth-to-space
    of the strided conv's input gradient) was computed three times, for its two sums
    (`relu_of_sum`) and for the 5x5 conv's kernel gradient. A conditional's result is
    materialized, and so is this one's; its predicate, True behind an optimization
    barrier, is opaque to XLA, which therefore keeps the conditional, and unbatched, so
    that `vmap` keeps it a conditional rather than computing both branches."""
    pred = jax.lax.optimization_barrier(jnp.bool_(True))
    return jax.lax.cond(pred, fn, fn, *args)


@jax.custom_vjp
def relu_of_sum(h: Array, per_position: Array, per_image: Array) -> Array:
    """relu(h [N, H, W, C] + per_position [H, W, C] (the same for every image) +
    per_image [N, C] (the same at every position)). Differentiated, the result and the
    ReLU's mask in the gradient are each computed once (`materialized`), and the two
    terms' gradients are products with ones (`sum_over_batch`, `sum_over_positions`)."""
    return jax.nn.relu(h + per_position[None] + per_image[:, None, None, :])


def _relu_of_sum_fwd(
    h: Array, per_position: Array, per_image: Array
) -> tuple[Array, tuple[Array, Array, Array]]:
    # Materialized here too: otherwise XLA fused the sum and ReLU into the gradient's
    # consumers of y, among them the strided conv's copies of its rows, and
    # recomputed them there (a gather over a recomputed sum at about 1 GB/s).
    y = materialized(relu_of_sum, h, per_position, per_image)
    return y, (y, per_position, per_image)


def _relu_of_sum_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array]:
    y, per_position, per_image = res
    g = materialized(lambda g, y: jnp.where(y > 0, g, jnp.zeros((), g.dtype)), g, y)
    return _add_offsets_bwd((per_position, per_image), g)


relu_of_sum.defvjp(_relu_of_sum_fwd, _relu_of_sum_bwd)


@jax.custom_vjp
def add_offsets(h: Array, per_position: Array, per_image: Array) -> Array:
    """h [N, H, W, C] + per_position [H, W, C] (the same for every image) + per_image
    [N, C] (the same at every position), with the two terms' gradients as products
    with ones (`sum_over_batch`, `sum_over_positions`)."""
    return h + per_position[None] + per_image[:, None, None, :]


def _add_offsets_fwd(
    h: Array, per_position: Array, per_image: Array
) -> tuple[Array, tuple[Array, Array]]:
    return add_offsets(h, per_position, per_image), (per_position, per_image)


def _add_offsets_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array, Array]:
    per_position, per_image = res
    return (
        g,
        sum_over_batch(g).astype(per_position.dtype),
        sum_over_positions(g).astype(per_image.dtype),
    )


add_offsets.defvjp(_add_offsets_fwd, _add_offsets_bwd)
