"""Network layers shared by the agent and the discriminator (Sonnet 1 conventions).

* Sonnet 1's initialiser (`sonnet_init`) and a fast way to draw a whole network's
  parameters with it (`init_from_one_draw`).
* Linear, MLP, residual stack, conv encoder and decoder, and the LSTM of deepmind/spiral's
  `spiral/agents/utils.py`.
* The 4x4 stride-2 conv, the transposed conv and the decoders' final narrow conv go
  through `spiral_jax.cpu_conv`: the same functions as `lax`'s, with gradients arranged
  for XLA's CPU backend (input-dilated convolutions and batch-last copies avoided).
* The first conv's constant coordinate channels are convolved once for the batch
  (`CoordConv`), not for every frame of the learner's time-folded batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.linen.dtypes import promote_dtype

from spiral_jax.cpu_conv import (  # noqa: F401 (re-exported: the layers' functions)
    add_bias,
    add_offsets,
    conv_4x4_s2,
    conv_few_channels,
    conv_transpose_4x4_s2,
    narrow_conv,
    relu_of_sum,
)
from spiral_jax.types import Array


def log2_stages(width: int, base: int, what: str) -> int:
    """Number of stride-2 stages between `width` and `base`; width must be base * 2^k."""
    ratio = width // base
    if width < base or width % base or ratio & (ratio - 1):
        raise ValueError(
            f"{what} must be {base} * 2^k (e.g. {base}, {2 * base}, {4 * base}, {8 * base}), "
            f"got {width}"
        )
    return ratio.bit_length() - 1


def sonnet_init(fan_in: int | None = None) -> nn.initializers.Initializer:
    """Sonnet 1's default weight initialiser: truncated normal (+-2 sd), sd 1/sqrt(fan_in).

    With `fan_in` None it is the product of all but the last dimension of the shape,
    which is Sonnet's fan-in for Linear ([in, out]), Conv2D and Conv2DTranspose
    ([kh, kw, in, out] in Flax).
    """

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        fan = fan_in if fan_in is not None else int(np.prod(shape[:-1]))
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / math.sqrt(fan)

    return init


def dense(features: int, name: str) -> nn.Dense:
    """snt.Linear: Sonnet's initialiser, zero bias."""
    return nn.Dense(features, kernel_init=sonnet_init(), name=name)


def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """snt.Conv2D with SAME padding: Sonnet's initialiser, zero bias."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=sonnet_init(),
        name=name,
    )


def coordinate_channels(height: int, width: int) -> Array:
    """[H, W, 2]: x then y, each linspace(-1, 1) along its axis (SPIRAL's torso input)."""
    x = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, width)[None, :], (height, width))
    y = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, height)[:, None], (height, width))
    return jnp.stack([x, y], axis=-1)


class CoordConv(nn.Module):
    """`conv(features, kernel, 1)` of the images with the two coordinate channels
    appended (`coordinate_channels`), the same function and parameters (kernel
    [k, k, C + 2, F], bias; named as `flax.linen.Conv`'s), computed as a conv of the
    images plus the coordinates' conv, done once for the whole batch. `per_image`
    [N, F], if given, is added at every position (the torso's conditioning); with
    `relu`, the output is the ReLU of all that (`cpu_conv.relu_of_sum`)."""

    features: int
    kernel_size: int
    relu: bool = False

    @nn.compact
    def __call__(self, images: Array, per_image: Array | None = None) -> Array:
        n, height, width, c = images.shape
        k = self.kernel_size
        kernel = self.param("kernel", sonnet_init(), (k, k, c + 2, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        # As the conv of the concatenation would: float32 coordinates promote the rest.
        images, kernel, bias = promote_dtype(images, kernel, bias, dtype=jnp.float32)
        coords = coordinate_channels(height, width)[None].astype(images.dtype)
        conv2d = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if per_image is None:
            per_image = jnp.zeros((n, self.features), images.dtype)
        # The terms broadcast over the batch and over the positions are added by
        # `add_offsets` or `relu_of_sum`, whose gradients avoid XLA's slow windowed
        # reductions.
        per_position = conv2d(coords, kernel[:, :, c:])[0] + bias
        add = relu_of_sum if self.relu else add_offsets
        h = conv_few_channels(images, kernel[:, :, :c])  # faster for a few channels
        return add(h, per_position, per_image.astype(images.dtype))


class NarrowConv(nn.Module):
    """`conv(features, kernel, 1)` (SAME, bias; `flax.linen.Conv`'s parameters) through
    `narrow_conv`: for a few output channels, such as the decoders' final conv to
    one logit per cell."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        kernel = self.param("kernel", sonnet_init(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = promote_dtype(x, kernel, bias)  # as flax.linen.Conv does
        return add_bias(narrow_conv(x, kernel), bias)


class MLP(nn.Module):
    """Linear layers with ReLU between them and none after the last (snt.nets.MLP)."""

    sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, size in enumerate(self.sizes):
            x = dense(size, f"linear_{i}")(x)
            if i < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


class ResidualStack(nn.Module):
    """Pre-activation residual blocks, then a ReLU (spiral.agents.utils.ResidualStack)."""

    channels: int
    num_blocks: int
    hidden: int

    @nn.compact
    def __call__(self, h: Array) -> Array:
        for i in range(self.num_blocks):
            h_i = nn.relu(h)
            h_i = conv(self.hidden, 3, 1, f"res_3x3_{i}")(h_i)
            h_i = nn.relu(h_i)
            h_i = conv(self.channels, 1, 1, f"res_1x1_{i}")(h_i)
            h = h + h_i
        return nn.relu(h)


class StridedConv(nn.Module):
    """4x4 stride-2 SAME conv with bias (Sonnet's Conv2D(stride=2)), fast on CPUs.

    Parameters are named and shaped as `flax.linen.Conv`'s (``kernel`` [4, 4, C_in,
    C_out], ``bias``), so the two are interchangeable. It computes in the kernel's dtype,
    or in `dtype` when given (the discriminator keeps float32 parameters and casts).
    """

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"StridedConv needs even height and width, got {x.shape[1:3]}")
        kernel = self.param("kernel", sonnet_init(), (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.dtype is not None:
            x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return add_bias(conv_4x4_s2(x, kernel), bias)


class ConvTranspose4x4(nn.Module):
    """4x4 stride-2 SAME transposed conv with bias (Sonnet's Conv2DTranspose), the
    function of `flax.linen.ConvTranspose` with the same parameters, fast on CPUs.

    The kernel is [4, 4, C_in, C_out] with fan-in 4 * 4 * C_in, as Sonnet 1 has it.
    (TF's conv2d_transpose is the gradient of a conv and so reads the kernel flipped;
    for a network trained from scratch that is only a relabelling of the weights.)
    """

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", sonnet_init(), (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return add_bias(conv_transpose_4x4_s2(x, kernel), bias)


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convs (ReLU), a 3x3 conv and a residual stack (utils.ConvEncoder)."""

    channels: int
    num_blocks: int
    num_stages: int

    @nn.compact
    def __call__(self, h: Array) -> tuple[Array, tuple[Array, ...]]:
        """-> (the residual stack's output, the strided convs' outputs coarsest first)."""
        maps = []
        for i in range(self.num_stages):
            h = nn.relu(StridedConv(self.channels, name=f"strided_{i}")(h))
            maps.append(h)
        h = conv(self.channels, 3, 1, "pre_stack")(h)
        return ResidualStack(self.channels, self.num_blocks, self.channels, name="res")(h), tuple(
            reversed(maps)
        )


class ConvDecoder(nn.Module):
    """A 3x3 conv, a residual stack, stride-2 4x4 transposed convs (ReLU) and a final
    3x3 conv (utils.ConvDecoder).

    `skips` (an extension, none in SPIRAL): feature maps, coarsest first, whose i-th is
    added through a 1x1 conv to the i-th transposed conv's output before its ReLU, as in
    a U-Net; each must have that output's height and width.
    """

    channels: int
    num_blocks: int
    num_stages: int
    out_channels: int = 1

    @nn.compact
    def __call__(self, h: Array, skips: tuple[Array, ...] = ()) -> Array:
        if len(skips) > self.num_stages:
            raise ValueError(f"{len(skips)} skips for a decoder of {self.num_stages} stages")
        h = conv(self.channels, 3, 1, "pre_stack")(h)
        h = ResidualStack(self.channels, self.num_blocks, self.channels, name="res")(h)
        for i in range(self.num_stages):
            h = ConvTranspose4x4(self.channels, name=f"strided_transpose_{i}")(h)
            if i < len(skips):
                if skips[i].shape[:-1] != h.shape[:-1]:
                    raise ValueError(
                        f"skip {i} has shape {skips[i].shape}; the decoder's stage {i} "
                        f"gives {h.shape}"
                    )
                h = h + conv(self.channels, 1, 1, f"skip_{i}")(skips[i])
            h = nn.relu(h)
        return NarrowConv(self.out_channels, 3, name="final")(h)


class LSTMState(struct.PyTreeNode):
    """LSTM state, [..., lstm_size] each."""

    hidden: Array
    cell: Array


class SonnetLSTM(nn.Module):
    """snt.LSTM over a time-major sequence, with state resets.

    gates = concat(x, h_prev) @ W + b, split as (i, j, f, o);
    c = sigmoid(f + forget_bias) * c_prev + sigmoid(i) * tanh(j); h = tanh(c) * sigmoid(o).
    Where `resets[t]` is true the previous state is replaced by zeros first (SPIRAL's
    `_maybe_reset_core_state`).
    """

    hidden_size: int
    forget_bias: float = 1.0

    @nn.compact
    def __call__(self, inputs: Array, resets: Array, state: LSTMState) -> tuple[Array, LSTMState]:
        """inputs [T, B, I], resets bool [T, B] -> outputs [T, B, H], final state."""
        in_size = inputs.shape[-1]
        init = sonnet_init(in_size + self.hidden_size)
        w = self.param("w_gates", init, (in_size + self.hidden_size, 4 * self.hidden_size))
        b = self.param("b_gates", init, (4 * self.hidden_size,))
        # The input half of the product does not depend on the recurrence: do it for
        # all steps at once, outside the scan.
        x_gates = jnp.einsum("tbi,ig->tbg", inputs, w[:in_size]) + b
        w_h = w[in_size:]

        def cell(carry: LSTMState, xs: tuple[Array, Array]) -> tuple[LSTMState, Array]:
            gx, reset = xs
            keep = jnp.logical_not(reset)[:, None]
            h_prev = jnp.where(keep, carry.hidden, 0.0)
            c_prev = jnp.where(keep, carry.cell, 0.0)
            gates = gx + h_prev @ w_h
            i, j, f, o = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f + self.forget_bias) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(j)
            h = jnp.tanh(c) * jax.nn.sigmoid(o)
            return LSTMState(hidden=h, cell=c), h

        final, outputs = jax.lax.scan(cell, state, (x_gates, resets))
        return outputs, final


# ----------------------------------------------------------------------------------------
# Drawing a whole network's parameters at once.


def sonnet_std(path: tuple[Any, ...], shape: tuple[int, ...], shapes: Any) -> float:
    """The sd with which Sonnet 1 draws a parameter of a network built from these layers.

    Kernels: 1/sqrt(fan_in), fan_in = all but the last dimension (`sonnet_init`); biases
    zero; the LSTM's gate weights and gate bias both 1/sqrt(input + hidden), the fan-in
    of its weight matrix (`SonnetLSTM`). `shapes` is the whole tree, for that sibling.
    """
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "bias":
        return 0.0
    if name == "kernel" or name == "w_gates":
        return 1.0 / math.sqrt(int(np.prod(shape[:-1])))
    if name == "b_gates":
        parent = shapes
        for entry in path[:-1]:
            parent = parent[entry.key]
        return 1.0 / math.sqrt(parent["w_gates"].shape[0])
    raise ValueError(f"no Sonnet initialiser known for parameter {jax.tree_util.keystr(path)}")


def init_from_one_draw(
    shapes: Any, key: Array, std: Callable[[tuple[Any, ...], tuple[int, ...], Any], float]
) -> Any:
    """Parameters of the shapes in `shapes`, each a truncated normal (+-2 sd) times
    `std(path, shape, shapes)`, drawn as one vector cut into pieces in tree order.

    The same distribution as the modules' own initialisers, but XLA on a CPU spends
    ~0.1 s compiling each separate random draw, so `module.init` of even a small agent
    takes ~10 s (40 s jitted) and this about a second. Not traceable (runs eagerly).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
    draw = jax.jit(jax.random.truncated_normal, static_argnums=(3,))
    # One draw on the device, cut up on the host: XLA's CPU backend spends tens of
    # milliseconds compiling every slice, which for ~150 leaves costs seconds.
    flat = np.asarray(draw(key, -2.0, 2.0, (max(sum(sizes), 1),)), np.float32)
    pieces = np.split(flat[: sum(sizes)], np.cumsum(sizes)[:-1])
    out = [
        jnp.asarray((piece * np.float32(std(path, leaf.shape, shapes))).reshape(leaf.shape),
                    leaf.dtype)
        for piece, (path, leaf) in zip(pieces, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)
