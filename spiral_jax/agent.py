"""SPIRAL's default agent (Ganin et al., ICML 2018, arXiv:1804.01118) in Flax linen.

A layer-by-layer rebuild of deepmind/spiral's `spiral/agents/default.py` and
`spiral/agents/utils.py` (TF1 / Sonnet 1), plus two extensions: a conditional input
(the target image beside the canvas) and configurable sizes, so that a small variant
trains on a CPU. The paper-sized default (`PAPER`) reproduces SPIRAL's network.

Layers, for a canvas of width W and an action grid of width G (paper: W=64, G=32;
`c` = `AgentConfig.channels`, 32 in the paper; `r` = `num_res_blocks`, 8; `h` =
`lstm_size`, 256; the MLP widths and the embedding width 16 are `AgentConfig` fields
too). The paper-sized agent for SPIRAL's 64x64 colour environment (grid 32, pressure,
six brush sizes) has 1,613,329 parameters::

  Torso
    input      canvas [W, W, C] (+ target [W, W, C] if conditional)
               + x, y coordinate channels (linspace(-1, 1) along width / height)
    conv       5x5, c, stride 1 (no activation)
    condition  for every action part k in spec order: Linear(16) of the previous
               action, times the part's mask from the observation (bias included);
               location parts from (y, x) scaled to [-1, 1] by /(G - 1), others
               one-hot. Concatenate -> MLP[64, 32, c]
               + MLP[64, 32, c] of the episode's noise (10-d N(0, 1))
               added to every pixel of the conv output, then ReLU
  Encoder      (log2(W / 8) stride-2 stages: 64 -> 32 -> 16 -> 8 for W = 64)
    conv       4x4, c, stride 2, ReLU              (repeated log2(W / 8) times)
    conv       3x3, c (no activation)
    res block  ReLU -> 3x3 conv c -> ReLU -> 1x1 conv c, added   (r blocks)
    ReLU
    flatten (8 * 8 * c) -> ReLU -> Linear(`torso_output`, 256)
  Core         LSTM(h): gates i, j, f, o from one matrix over concat(x, h_prev);
               forget-gate bias +1; zero state at episode starts (step_type FIRST)
  Heads        autoregressive, in the order flag, end, control, size, pressure, red,
               green, blue (parts absent from the action spec are skipped); z = LSTM out
    location   (end, control; each its own decoder): reshape z to 4 x 4 x (h / 16)
               -> 3x3 conv c -> r res blocks -> ReLU
               -> log2(G / 4) transposed convs 4x4, c, stride 2, ReLU
                  (4 -> 8 -> 16 -> 32 for G = 32; 2 stages for G = 16, 1 for G = 8)
               -> 3x3 conv to 1 channel -> flatten to G^2 logits, index y * G + x
    other      Linear(number of choices)
    feedback   after sampling part k: e = Linear(16)(action features of k);
               z = ReLU(z + MLP[16, 32, h](concat(z, e)))
  Baseline     Linear(1) of the LSTM output (not of the autoregressively updated z)

MLPs put a ReLU between layers and none after the last. Convolutions use SAME
padding. Initialisers follow Sonnet 1: weights truncated normal (cut at 2 sd) with
sd 1/sqrt(fan_in), fan_in = kh * kw * C_in for (transposed) convs, biases zero; the
LSTM's weight and bias truncated normal with sd 1/sqrt(input + hidden).

Canvas widths must be 8 * 2^k and grid widths 4 * 2^k, as in SPIRAL, whose encoder
and decoder derive their number of stride-2 stages from W / 8 and G / 4 (a 16-wide
grid starts its decoder at 4x4 and upsamples twice, an 8-wide grid once, a 4-wide
grid not at all).

The stride-2 layers compute exactly `lax.conv_general_dilated` / `lax.conv_transpose`
(tested against brute force and Flax's own layers) but are arranged for XLA's CPU
backend, which runs input-dilated convolutions slowly: the transposed conv is a
stride-1 3x3 conv to 4x the channels plus depth-to-space, and the strided conv's
input gradient is computed that way too. This halves the learner's time on a CPU.

Masks. The environment's observation carries the mask of the action that produced
it (move: only `flag` and `end` count; paint: all parts); SPIRAL's agent uses that
mask to condition on the previous action. The mask that applies to the action being
taken now depends on its own sampled `flag`: `action_masks` derives it, and the
log-probs and entropies here are multiplied by it. (SPIRAL's public code has no
learner; this is the masking its environment defines.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

FIRST, MID, LAST = 0, 1, 2
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# SPIRAL's action-spec order (spiral/environments/libmypaint.py) and the order in
# which the agent samples the parts (AutoregressiveHeads.ORDERS["libmypaint"]).
SPEC_ORDER = ("control", "end", "flag", "pressure", "size", "red", "green", "blue")
HEAD_ORDER = ("flag", "end", "control", "size", "pressure", "red", "green", "blue")
LOCATION_KEYS = ("end", "control")
# Parts that count on a move step (flag = 0).
MOVE_PARTS = ("flag", "end")
REQUIRED_PARTS = ("control", "end", "flag")

ActionSpec = tuple[tuple[str, int], ...]
Array = jax.Array


# ----------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Sizes of the agent. The defaults are SPIRAL's (see `PAPER`).

    Attributes:
      channels: channels of the torso conv, the encoder, the decoders and all residual
        blocks (SPIRAL: 32). Also the output width of the conditioning MLPs.
      num_res_blocks: residual blocks in the encoder and in each location decoder (8).
      lstm_size: LSTM width, which is also the width of z in the heads (256). Must be a
        multiple of 16 (the location decoders reshape z to 4 x 4 x lstm_size / 16).
      torso_output: width of the Linear between the encoder and the LSTM (256).
      cond_hidden: hidden widths of the previous-action MLP (64, 32).
      noise_hidden: hidden widths of the noise MLP (64, 32).
      embed_dim: width of every action embedding (16).
      residual_hidden: hidden widths of the heads' residual MLPs (16, 32).
      noise_dim: size of the per-episode noise (10); 0 drops the noise input.
      conditional: whether the agent also sees a target image (our extension).
      dtype: compute dtype, "float32" or "bfloat16" (accelerators). Inputs and the
        heads' inputs are cast to it; logits, baselines and the LSTM state stay
        float32. Parameters stay float32: pass a copy cast to `dtype` to `apply`
        (as `spiral_jax.train` does) to run the layers in it.
    """

    channels: int = 32
    num_res_blocks: int = 8
    lstm_size: int = 256
    torso_output: int = 256
    cond_hidden: tuple[int, ...] = (64, 32)
    noise_hidden: tuple[int, ...] = (64, 32)
    embed_dim: int = 16
    residual_hidden: tuple[int, ...] = (16, 32)
    noise_dim: int = 10
    conditional: bool = False
    dtype: str = "float32"

    def validate(self) -> None:
        """Raises ValueError for sizes the network cannot be built with."""
        for name in ("channels", "lstm_size", "torso_output", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AgentConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_res_blocks, (int, np.integer)) or self.num_res_blocks < 0:
            raise ValueError(
                f"AgentConfig.num_res_blocks must be an int >= 0, got {self.num_res_blocks!r}"
            )
        if not isinstance(self.noise_dim, (int, np.integer)) or self.noise_dim < 0:
            raise ValueError(f"AgentConfig.noise_dim must be an int >= 0, got {self.noise_dim!r}")
        if self.lstm_size % 16:
            raise ValueError(
                f"AgentConfig.lstm_size must be a multiple of 16 (z is reshaped to 4x4xC), "
                f"got {self.lstm_size}"
            )
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"AgentConfig.dtype must be one of {tuple(COMPUTE_DTYPES)}, got {self.dtype!r}"
            )
        for name in ("cond_hidden", "noise_hidden", "residual_hidden"):
            widths = getattr(self, name)
            if not isinstance(widths, tuple) or not all(
                isinstance(w, (int, np.integer)) and w >= 1 for w in widths
            ):
                raise ValueError(
                    f"AgentConfig.{name} must be a tuple of positive ints, got {widths!r}"
                )


#: SPIRAL's network (spiral/agents/default.py).
PAPER = AgentConfig()
#: A variant that trains on a CPU: 16 channels, 2 residual blocks, LSTM 64.
SMALL = AgentConfig(
    channels=16,
    num_res_blocks=2,
    lstm_size=64,
    torso_output=64,
    cond_hidden=(32, 16),
    noise_hidden=(32, 16),
    embed_dim=16,
    residual_hidden=(16, 32),
)


def _log2_stages(width: int, base: int, what: str) -> int:
    """Number of stride-2 stages between `width` and `base`; width must be base * 2^k."""
    ratio = width // base
    if width < base or width % base or ratio & (ratio - 1):
        raise ValueError(
            f"{what} must be {base} * 2^k (e.g. {base}, {2 * base}, {4 * base}, {8 * base}), "
            f"got {width}"
        )
    return ratio.bit_length() - 1


def canonical_action_spec(action_spec: Mapping[str, int] | ActionSpec) -> ActionSpec:
    """Checks an environment's action spec and returns it as a hashable tuple.

    Args:
      action_spec: name -> number of choices, e.g. `env.action_spec()`.

    Returns:
      ((name, num_choices), ...) in SPIRAL's spec order.
    """
    items = tuple(action_spec.items()) if isinstance(action_spec, Mapping) else tuple(action_spec)
    spec = {}
    for name, num in items:
        if name not in SPEC_ORDER:
            raise ValueError(f"unknown action part {name!r}; allowed: {SPEC_ORDER}")
        num = int(num)
        if num < 1:
            raise ValueError(f"action part {name!r} needs >= 1 choice, got {num}")
        spec[name] = num
    for name in REQUIRED_PARTS:
        if name not in spec:
            raise ValueError(f"action spec lacks {name!r}; it has {tuple(spec)}")
    if spec["flag"] != 2:
        raise ValueError(f"'flag' must have 2 choices (move, paint), got {spec['flag']}")
    if spec["control"] != spec["end"]:
        raise ValueError(
            f"'control' and 'end' must share one grid, got {spec['control']} and {spec['end']}"
        )
    grid = math.isqrt(spec["end"])
    if grid * grid != spec["end"]:
        raise ValueError(f"location parts need grid_width^2 choices, got {spec['end']}")
    _log2_stages(grid, 4, "grid_width")
    return tuple((name, spec[name]) for name in SPEC_ORDER if name in spec)


def grid_width_of(action_spec: ActionSpec) -> int:
    """The grid width G of an action spec whose location parts have G^2 choices."""
    return math.isqrt(dict(action_spec)["end"])


# ----------------------------------------------------------------------------------------
# Pytrees passed in and out.


class LSTMState(struct.PyTreeNode):
    """LSTM state, [..., lstm_size] each."""

    hidden: Array
    cell: Array


class AgentState(struct.PyTreeNode):
    """What the agent carries from one step to the next (SPIRAL's `AgentState`)."""

    lstm: LSTMState
    prev_action: dict[str, Array]  # name -> int32 [B]


class AgentOutput(struct.PyTreeNode):
    """One step's output (SPIRAL's `AgentOutput`), batch-major [B, ...]."""

    action: dict[str, Array]  # name -> int32 [B]
    logits: dict[str, Array]  # name -> float32 [B, num_choices]
    baseline: Array  # float32 [B]


class UnrollOutput(struct.PyTreeNode):
    """Re-evaluation of a time-major trajectory, [T, B, ...]."""

    log_probs: dict[str, Array]  # masked per-part log pi(a_t | ...)
    log_prob: Array  # sum over parts of `log_probs`
    entropies: dict[str, Array]  # masked per-part entropies
    entropy: Array  # sum over parts of `entropies`
    baseline: Array
    logits: dict[str, Array]
    masks: dict[str, Array]  # mask of a_t, from a_t's flag
    final_state: AgentState  # state after the last step, [B, ...]


# ----------------------------------------------------------------------------------------
# Distributions and masks (pure functions, usable outside the module).


def action_masks(flag: Array, names: tuple[str, ...] | ActionSpec) -> dict[str, Array]:
    """Which parts of an action count, given its sampled `flag` (SPIRAL's ACTION_MASKS).

    Paint (flag 1): all parts. Move (flag 0): only `flag` and `end`.
    """
    names = tuple(n if isinstance(n, str) else n[0] for n in names)
    paint = (flag == 1).astype(jnp.float32)
    return {k: jnp.ones_like(paint) if k in MOVE_PARTS else paint for k in names}


def masked_log_probs(
    logits: Mapping[str, Array], actions: Mapping[str, Array], masks: Mapping[str, Array]
) -> dict[str, Array]:
    """Per-part log-softmax(logits)[action], times the part's mask."""
    out = {}
    for k, lg in logits.items():
        logp = jax.nn.log_softmax(lg, axis=-1)
        picked = jnp.take_along_axis(logp, actions[k][..., None].astype(jnp.int32), axis=-1)
        out[k] = picked[..., 0] * masks[k]
    return out


def masked_entropies(logits: Mapping[str, Array], masks: Mapping[str, Array]) -> dict[str, Array]:
    """Per-part entropy -sum p log p of softmax(logits), times the part's mask."""
    out = {}
    for k, lg in logits.items():
        logp = jax.nn.log_softmax(lg, axis=-1)
        out[k] = -jnp.sum(jnp.exp(logp) * logp, axis=-1) * masks[k]
    return out


def zero_action(action_spec: ActionSpec, batch_shape: tuple[int, ...]) -> dict[str, Array]:
    """The all-zeros action SPIRAL feeds as `previous action` at episode starts."""
    return {k: jnp.zeros(batch_shape, jnp.int32) for k, _ in action_spec}


def initial_state(action_spec: ActionSpec, config: AgentConfig, batch_size: int) -> AgentState:
    """Zero LSTM state and zero previous action for `batch_size` episodes."""
    zeros = jnp.zeros((batch_size, config.lstm_size), jnp.float32)
    return AgentState(
        lstm=LSTMState(hidden=zeros, cell=zeros),
        prev_action=zero_action(action_spec, (batch_size,)),
    )


def _action_features(name: str, action: Array, num: int, grid: int) -> Array:
    """Features embedded for an action part: (y, x) in [-1, 1] for locations, else one-hot."""
    if name in LOCATION_KEYS:
        a = action.astype(jnp.int32)
        y = -1.0 + 2.0 * (a // grid).astype(jnp.float32) / (grid - 1)
        x = -1.0 + 2.0 * (a % grid).astype(jnp.float32) / (grid - 1)
        return jnp.stack([y, x], axis=-1)
    return jax.nn.one_hot(action, num, dtype=jnp.float32)


# ----------------------------------------------------------------------------------------
# Layers.


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


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=sonnet_init(), name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=sonnet_init(),
        name=name,
    )


class MLP(nn.Module):
    """Linear layers with ReLU between them and none after the last (snt.nets.MLP)."""

    sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, size in enumerate(self.sizes):
            x = _dense(size, f"linear_{i}")(x)
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
            h_i = _conv(self.hidden, 3, 1, f"res_3x3_{i}")(h_i)
            h_i = nn.relu(h_i)
            h_i = _conv(self.channels, 1, 1, f"res_1x1_{i}")(h_i)
            h = h + h_i
        return nn.relu(h)


_DN = ("NHWC", "HWIO", "NHWC")
# lax.conv_transpose (stride 2, SAME, 4 taps) sends input i through tap k to output
# 2i + 2 - k. Output 2m + p therefore reads input m + d through tap _TAP[(p, d)].
_TAP = {(0, -1): 0, (0, 0): 2, (1, 0): 1, (1, 1): 3}


def _subpixel_kernel(kernel: Array) -> Array:
    """[4, 4, Ci, Co] transposed-conv kernel -> [3, 3, Ci, 4 * Co] sub-pixel kernel."""
    ci, co = kernel.shape[2], kernel.shape[3]
    sub = jnp.zeros((3, 3, ci, 2, 2, co), kernel.dtype)
    for (py, dy), ky in _TAP.items():
        for (px, dx), kx in _TAP.items():
            sub = sub.at[dy + 1, dx + 1, :, py, px, :].set(kernel[ky, kx])
    return sub.reshape(3, 3, ci, 4 * co)


def conv_transpose_4x4_s2(x: Array, kernel: Array) -> Array:
    """`lax.conv_transpose(x, kernel, (2, 2), "SAME")` for a 4x4 kernel, computed as a
    stride-1 3x3 conv to 4 * C_out channels followed by depth-to-space.

    The same function (tested against Flax's ConvTranspose and a numpy brute force),
    but XLA's CPU backend runs the input-dilated convolution that `conv_transpose`
    lowers to, and its weight gradient, 4-5x slower than this.
    """
    n, h, w, _ = x.shape
    co = kernel.shape[-1]
    x = x.astype(kernel.dtype)  # the kernel's dtype is the compute dtype
    y = jax.lax.conv_general_dilated(
        x, _subpixel_kernel(kernel), (1, 1), "SAME", dimension_numbers=_DN
    )
    y = y.reshape(n, h, w, 2, 2, co).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, co)


def conv_4x4_s2(x: Array, kernel: Array) -> Array:
    """A 4x4, stride-2, SAME convolution in the kernel's dtype; see `_conv_4x4_s2`."""
    return _conv_4x4_s2(x.astype(kernel.dtype), kernel)


@jax.custom_vjp
def _conv_4x4_s2(x: Array, kernel: Array) -> Array:
    """A 4x4, stride-2, SAME convolution (NHWC, even H and W).

    Its input gradient is a stride-2 transposed convolution, computed with
    `conv_transpose_4x4_s2`: XLA's CPU backend runs the default (input-dilated) one
    about 5x slower. Values and gradients are those of `lax.conv_general_dilated`.
    """
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=_DN)


def _conv_4x4_s2_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv_4x4_s2(x, kernel), (x, kernel)


def _conv_4x4_s2_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    # y[i] = sum_k x[2i + k - 1] w[k]  =>  dx[j] = sum over 2i + k - 1 = j of g[i] w[k],
    # a transposed conv of g with the kernel flipped in space and in/out swapped.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = conv_transpose_4x4_s2(g, flipped)
    _, vjp_w = jax.vjp(
        lambda k: jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=_DN),
        kernel,
    )
    return dx, vjp_w(g)[0]


_conv_4x4_s2.defvjp(_conv_4x4_s2_fwd, _conv_4x4_s2_bwd)


class StridedConv(nn.Module):
    """4x4 stride-2 SAME conv with bias (Sonnet's Conv2D(stride=2)), fast on CPUs."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"StridedConv needs even height and width, got {x.shape[1:3]}")
        kernel = self.param("kernel", sonnet_init(), (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_4x4_s2(x, kernel) + bias


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
        return conv_transpose_4x4_s2(x, kernel) + bias


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convs (ReLU), a 3x3 conv and a residual stack (utils.ConvEncoder)."""

    channels: int
    num_blocks: int
    num_stages: int

    @nn.compact
    def __call__(self, h: Array) -> Array:
        for i in range(self.num_stages):
            h = nn.relu(StridedConv(self.channels, name=f"strided_{i}")(h))
        h = _conv(self.channels, 3, 1, "pre_stack")(h)
        return ResidualStack(self.channels, self.num_blocks, self.channels, name="res")(h)


class ConvDecoder(nn.Module):
    """A 3x3 conv, a residual stack, stride-2 4x4 transposed convs (ReLU) and a final
    3x3 conv (utils.ConvDecoder)."""

    channels: int
    num_blocks: int
    num_stages: int
    out_channels: int = 1

    @nn.compact
    def __call__(self, h: Array) -> Array:
        h = _conv(self.channels, 3, 1, "pre_stack")(h)
        h = ResidualStack(self.channels, self.num_blocks, self.channels, name="res")(h)
        for i in range(self.num_stages):
            h = nn.relu(ConvTranspose4x4(self.channels, name=f"strided_transpose_{i}")(h))
        return _conv(self.out_channels, 3, 1, "final")(h)


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


class Torso(nn.Module):
    """Canvas (+ target) + coordinates -> conv, conditioned on previous action and noise,
    -> encoder -> Linear (SPIRAL's `Agent._torso`)."""

    action_spec: ActionSpec
    config: AgentConfig

    @nn.compact
    def __call__(
        self,
        observation: Mapping[str, Any],
        prev_action: Mapping[str, Array],
        noise: Array | None,
    ) -> Array:
        cfg = self.config
        canvas = observation["canvas"]
        n, height, width, _ = canvas.shape
        stages = _log2_stages(width, 8, "canvas width")
        if height != width:
            raise ValueError(f"canvas must be square, got {height}x{width}")
        grid = grid_width_of(self.action_spec)

        x_grid = jnp.broadcast_to(
            jnp.linspace(-1.0, 1.0, width)[None, None, :, None], (n, height, width, 1)
        )
        y_grid = jnp.broadcast_to(
            jnp.linspace(-1.0, 1.0, height)[None, :, None, None], (n, height, width, 1)
        )
        spatial = [canvas]
        if cfg.conditional:
            spatial.append(observation["target"])
        spatial += [x_grid, y_grid]
        h = _conv(cfg.channels, 5, 1, "conv")(jnp.concatenate(spatial, axis=-1))

        conds = []
        mask = observation["action_mask"]
        for k, num in self.action_spec:
            feats = _action_features(k, prev_action[k], num, grid)
            conds.append(_dense(cfg.embed_dim, f"prev_{k}_embed")(feats) * mask[k][:, None])
        cond = MLP(cfg.cond_hidden + (cfg.channels,), name="prev_action_mlp")(
            jnp.concatenate(conds, axis=-1)
        )
        if cfg.noise_dim:
            cond = cond + MLP(cfg.noise_hidden + (cfg.channels,), name="noise_mlp")(noise)
        h = nn.relu(h + cond[:, None, None, :])

        h = ConvEncoder(cfg.channels, cfg.num_res_blocks, stages, name="encoder")(h)
        h = h.reshape(n, -1)
        return _dense(cfg.torso_output, "linear")(nn.relu(h))


class AutoregressiveHeads(nn.Module):
    """Samples (or teacher-forces) the action parts in HEAD_ORDER (SPIRAL's
    `AutoregressiveHeads`)."""

    action_spec: ActionSpec
    config: AgentConfig

    @nn.compact
    def __call__(
        self,
        z: Array,
        key: Array | None = None,
        actions: Mapping[str, Array] | None = None,
        greedy: bool = False,
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        """z [N, lstm_size] -> (logits, actions), dicts in spec order.

        Either `key` (sample; with `greedy`, take each part's most likely choice given
        the parts before it) or `actions` (teacher-force) must be given.
        """
        cfg = self.config
        spec = dict(self.action_spec)
        grid = grid_width_of(self.action_spec)
        stages = _log2_stages(grid, 4, "grid_width")
        order = [k for k in HEAD_ORDER if k in spec]
        keys = jax.random.split(key, len(order)) if actions is None else None
        n = z.shape[0]
        logits, taken = {}, {}
        for i, k in enumerate(order):
            if k in LOCATION_KEYS:
                zz = z.reshape(n, 4, 4, cfg.lstm_size // 16)
                out = ConvDecoder(cfg.channels, cfg.num_res_blocks, stages, 1, name=f"{k}_decoder")(
                    zz
                )
                logits[k] = out.reshape(n, grid * grid)
            else:
                logits[k] = _dense(spec[k], f"{k}_head")(z)
            if actions is None and greedy:
                a = jnp.argmax(logits[k], axis=-1).astype(jnp.int32)
            elif actions is None:
                a = jax.random.categorical(keys[i], logits[k], axis=-1).astype(jnp.int32)
            else:
                a = actions[k].astype(jnp.int32)
            taken[k] = a
            # SPIRAL also builds the feedback for the last part; its output is unused
            # (XLA drops it) but its parameters exist, so the count matches.
            embed = _dense(cfg.embed_dim, f"{k}_embed")(_action_features(k, a, spec[k], grid))
            residual = MLP(cfg.residual_hidden + (cfg.lstm_size,), name=f"{k}_residual_mlp")(
                jnp.concatenate([z, embed], axis=-1)
            )
            z = nn.relu(z + residual)
        names = [k for k, _ in self.action_spec]
        return {k: logits[k] for k in names}, {k: taken[k] for k in names}


class SpiralAgent(nn.Module):
    """SPIRAL's default agent. Build it with `make_agent` (checks the spec and sizes).

    Observations are dicts with `canvas` float32 [B, W, W, C], `action_mask`
    (name -> float32 [B], the mask of the previous action as the environment reports
    it) and, for conditional agents, `target` [B, W, W, C].
    """

    action_spec: ActionSpec
    config: AgentConfig = PAPER

    def setup(self) -> None:
        self.torso = Torso(self.action_spec, self.config)
        self.core = SonnetLSTM(self.config.lstm_size)
        self.heads = AutoregressiveHeads(self.action_spec, self.config)
        self.baseline_head = _dense(1, "baseline")

    def _check_observation(self, observation: Mapping[str, Any]) -> None:
        if self.config.conditional and "target" not in observation:
            raise ValueError("a conditional agent needs observation['target']")
        if self.config.conditional and observation["target"].shape != observation["canvas"].shape:
            raise ValueError(
                f"target shape {observation['target'].shape} != canvas shape "
                f"{observation['canvas'].shape}"
            )
        missing = [k for k, _ in self.action_spec if k not in observation["action_mask"]]
        if missing:
            raise ValueError(f"observation['action_mask'] lacks {missing}")

    def _encode(
        self,
        observation: Mapping[str, Any],
        prev_action: Mapping[str, Array],
        reset: Array,
        noise: Array | None,
    ) -> Array:
        # At episode starts SPIRAL feeds a zero previous action.
        prev_action = {
            k: jnp.where(reset, jnp.zeros_like(prev_action[k]), prev_action[k])
            for k, _ in self.action_spec
        }
        observation = dict(observation)
        for k in ("canvas", "target"):
            if k in observation:
                observation[k] = self._compute(observation[k])
        return self.torso(observation, prev_action, None if noise is None else self._compute(noise))

    def _compute(self, x: Array) -> Array:
        return x.astype(COMPUTE_DTYPES[self.config.dtype])

    def _heads(self, z: Array, **kwargs: Any) -> tuple[dict[str, Array], dict[str, Array]]:
        logits, action = self.heads(self._compute(z), **kwargs)
        return {k: v.astype(jnp.float32) for k, v in logits.items()}, action

    def step(
        self,
        observation: Mapping[str, Any],
        step_type: Array,
        state: AgentState,
        noise: Array | None,
        key: Array,
        greedy: bool = False,
    ) -> tuple[AgentOutput, AgentState]:
        """One time step for a batch: samples an action autoregressively.

        Args:
          observation: batch-major observation, see the class docstring.
          step_type: int32 [B]; FIRST resets the LSTM and the previous action.
          state: the state returned by the previous step (or `initial_state`).
          noise: float32 [B, noise_dim], the episode's noise (None if noise_dim 0).
          key: PRNG key for sampling.
          greedy: take each action part's most likely value (given the parts decided
            before it) instead of sampling; for evaluation.

        Returns:
          (AgentOutput(action, logits, baseline), new state).
        """
        self._check_observation(observation)
        reset = step_type == FIRST
        x = self._encode(observation, state.prev_action, reset, noise)
        out, lstm = self.core(x[None], reset[None], state.lstm)
        z = out[0]
        logits, action = self._heads(z, key=key, greedy=greedy)
        baseline = self.baseline_head(z)[..., 0].astype(jnp.float32)
        return AgentOutput(action=action, logits=logits, baseline=baseline), AgentState(
            lstm=lstm, prev_action=action
        )

    def unroll(
        self,
        observations: Mapping[str, Any],
        step_types: Array,
        actions: Mapping[str, Array],
        noise: Array | None,
        state: AgentState,
    ) -> UnrollOutput:
        """Re-evaluates given actions over a time-major trajectory.

        Teacher-forces the heads with `actions`, resets the LSTM (and previous action)
        at FIRST steps, and returns masked log-probs and entropies (masks from each
        action's own flag) and baselines.

        Args:
          observations: time-major observation, [T, B, ...] leaves.
          step_types: int32 [T, B].
          actions: name -> int32 [T, B], the actions taken at each step.
          noise: float32 [T, B, noise_dim] (None if noise_dim 0).
          state: agent state before the first step, [B, ...].
        """
        self._check_observation(observations)
        t, b = step_types.shape
        names = [k for k, _ in self.action_spec]
        prev = {
            k: jnp.concatenate([state.prev_action[k][None], actions[k][:-1]], axis=0) for k in names
        }
        flat = lambda x: x.reshape((t * b,) + x.shape[2:])  # noqa: E731
        reset = step_types == FIRST
        x = self._encode(
            jax.tree.map(flat, dict(observations)),
            {k: flat(v) for k, v in prev.items()},
            flat(reset),
            None if noise is None else flat(noise),
        )
        out, lstm = self.core(x.reshape(t, b, -1), reset, state.lstm)
        z = flat(out)
        logits, _ = self._heads(z, actions={k: flat(actions[k]) for k in names})
        logits = {k: v.reshape(t, b, -1) for k, v in logits.items()}
        baseline = self.baseline_head(out)[..., 0].astype(jnp.float32)
        masks = action_masks(actions["flag"], names)
        log_probs = masked_log_probs(logits, actions, masks)
        entropies = masked_entropies(logits, masks)
        return UnrollOutput(
            log_probs=log_probs,
            log_prob=sum(log_probs.values()),
            entropies=entropies,
            entropy=sum(entropies.values()),
            baseline=baseline,
            logits=logits,
            masks=masks,
            final_state=AgentState(lstm=lstm, prev_action={k: actions[k][-1] for k in names}),
        )


def make_agent(
    action_spec: Mapping[str, int] | ActionSpec, config: AgentConfig = PAPER
) -> SpiralAgent:
    """Checks the action spec and sizes, and builds the agent."""
    config.validate()
    return SpiralAgent(action_spec=canonical_action_spec(action_spec), config=config)


def dummy_observation(
    agent: SpiralAgent, observation_shape: tuple[int, int, int], batch_size: int = 1
) -> dict[str, Any]:
    """A batch of blank observations of the right structure (for `init` and tracing)."""
    obs: dict[str, Any] = {
        "canvas": jnp.ones((batch_size,) + tuple(observation_shape), jnp.float32),
        "action_mask": {k: jnp.ones((batch_size,), jnp.float32) for k, _ in agent.action_spec},
    }
    if agent.config.conditional:
        obs["target"] = jnp.ones((batch_size,) + tuple(observation_shape), jnp.float32)
    return obs


def _leaf_std(path: tuple[Any, ...], shape: tuple[int, ...], config: AgentConfig) -> float:
    """The Sonnet 1 initialiser's sd for a parameter, from its name and shape."""
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "bias":
        return 0.0
    if name in ("w_gates", "b_gates"):
        return 1.0 / math.sqrt(config.torso_output + config.lstm_size)
    if name == "kernel":
        return 1.0 / math.sqrt(int(np.prod(shape[:-1])))
    raise ValueError(f"no initialiser known for parameter {jax.tree_util.keystr(path)}")


def init_params(agent: SpiralAgent, key: Array, observation_shape: tuple[int, int, int]) -> Any:
    """Initialises the agent's parameters for canvases of `observation_shape` (W, W, C).

    Same distribution as `agent.init` (Sonnet 1's initialisers, see `sonnet_init`), but
    drawn as one truncated-normal vector cut into pieces: XLA on a CPU spends ~0.1 s
    compiling each separate random draw, so `agent.init` of even the small net takes
    ~10 s, this about a second. Not traceable (it runs eagerly).
    """
    if len(observation_shape) != 3 or observation_shape[0] != observation_shape[1]:
        raise ValueError(f"observation_shape must be (W, W, C), got {observation_shape}")
    _log2_stages(observation_shape[0], 8, "canvas width")
    obs = dummy_observation(agent, observation_shape)
    noise = jnp.zeros((1, agent.config.noise_dim), jnp.float32) if agent.config.noise_dim else None
    state = initial_state(agent.action_spec, agent.config, 1)
    step_type = jnp.full((1,), FIRST, jnp.int32)
    shapes = jax.eval_shape(
        functools.partial(agent.init, method=SpiralAgent.step),
        jax.random.key(0),
        obs,
        step_type,
        state,
        noise,
        jax.random.key(0),
    )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    stds = [_leaf_std(path, leaf.shape, agent.config) for path, leaf in leaves]
    sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]

    # One draw on the device, cut up on the host: XLA's CPU backend spends tens of
    # milliseconds compiling every slice, which for ~150 leaves costs seconds.
    flat = np.asarray(
        jax.jit(jax.random.truncated_normal, static_argnums=(3,))(key, -2.0, 2.0, (sum(sizes),)),
        np.float32,
    )
    pieces = np.split(flat, np.cumsum(sizes)[:-1])
    out = [
        jnp.asarray((piece * np.float32(std)).reshape(leaf.shape), leaf.dtype)
        for piece, std, (_, leaf) in zip(pieces, stds, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
