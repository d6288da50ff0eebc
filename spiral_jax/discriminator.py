"""SPIRAL's discriminator network (Ganin et al., ICML 2018; Mellor et al., 2019).

The network is a DCGAN-style critic (Radford et al., 2016; SPIRAL App. B): a stack of
4x4 stride-2 convolutions, each followed by a leaky ReLU (slope 0.2), then a linear
layer to one score per image. For 64x64 canvases the paper-sized widths are
64-128-256-512 (64 -> 32 -> 16 -> 8 -> 4, then 4 * 4 * 512 -> 1). There is no batch
normalisation anywhere: the WGAN-GP penalty is defined per example and batch
statistics would couple the examples (Gulrajani et al., 2017, Sec. 4), and it would
make a real/fake batch's scores depend on each other.

Its losses are in `spiral_jax.gan_losses`. With ``spectral_norm`` (SPIRAL++, Mellor
et al., 2019) every conv and linear kernel is divided by its largest singular value
(Miyato et al., 2018). Conditional discriminators judge (canvas, target) pairs,
concatenated on channels; with ``complement`` (SPIRAL++) the pairs are half a canvas
beside the target's other half (`spiral_jax.complement`), built by the caller: the
network is the same. `critic_fn` gives the losses and rewards a function
``apply_fn(params, canvas, target) -> scores`` (float32 [B]; ``target`` None for an
unconditional D) with the spectral-norm statistics held fixed.

Spectral-norm statistics (the power-iteration vectors ``u`` and the last ``sigma``
of each layer) live in their own Flax collection, ``"spectral"``, apart from
``"params"``: they are not trained. Every forward pass runs ``power_iterations``
steps from the stored ``u`` (with ``stop_gradient``) and divides the kernel by the
resulting sigma; `update_spectral_stats` stores the advanced ``u`` once per D step,
after the parameter update (Miyato et al.'s one iteration per step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax import layers
from spiral_jax.layers import sonnet_init
from spiral_jax.types import Array, check_compute_dtype, is_int

#: (params, canvas [B, H, W, C], target [B, H, W, C] or None) -> scores float32 [B].
CriticFn = Callable[[Any, Array, Array | None], Array]

SPECTRAL = "spectral"  # the Flax collection of the spectral-norm statistics


# ----------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes and options of the discriminator; the defaults are SPIRAL's for 64x64
    canvases. `config.disc` holds these fields (`conditional` and `dtype` come from the
    run's top-level fields)."""

    channels: tuple[int, ...] = (64, 128, 256, 512)  # stride-2 conv widths; () = linear
    kernel_size: int = 4  # side of every convolution kernel (DCGAN)
    leaky_slope: float = 0.2  # negative slope of the leaky ReLUs (DCGAN)
    spectral_norm: bool = False  # divide every kernel by its top singular value (SPIRAL++)
    power_iterations: int = 1  # power-iteration steps per forward pass (Miyato et al.)
    # 4x4 stride-2 layers via `layers.StridedConv`: the same function and parameters as
    # nn.Conv, but its input gradient avoids the input-dilated convolution that XLA's CPU
    # backend runs slowly; WGAN-GP differentiates input gradients (~3.5x faster here).
    cpu_friendly_conv: bool = True
    conditional: bool = False  # judges (canvas, target) pairs, concatenated on channels
    # SPIRAL++'s complement D: half an image beside the target's other half (`complement`)
    complement: bool = False
    dtype: str = "float32"  # compute dtype; parameters, statistics and the score stay f32

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):  # JSON gives lists
            object.__setattr__(self, "channels", tuple(self.channels))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError for options the network cannot be built with."""
        if not isinstance(self.channels, tuple) or not all(
            is_int(c) and c >= 1 for c in self.channels
        ):
            raise ValueError(f"disc.channels={self.channels!r}: must be a tuple of positive ints")
        if not is_int(self.kernel_size) or self.kernel_size < 1:
            raise ValueError(f"disc.kernel_size={self.kernel_size!r}: must be a positive int")
        if not isinstance(self.leaky_slope, (int, float)) or not 0 <= self.leaky_slope < 1:
            raise ValueError(f"disc.leaky_slope={self.leaky_slope!r}: must be in [0, 1)")
        if not is_int(self.power_iterations) or self.power_iterations < 1:
            raise ValueError(
                f"disc.power_iterations={self.power_iterations!r}: must be an int >= 1"
            )
        for name in ("spectral_norm", "cpu_friendly_conv", "conditional", "complement"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"disc.{name}={getattr(self, name)!r}: must be a bool")
        if self.complement and not self.conditional:
            raise ValueError(
                "disc.complement=True needs a conditional discriminator (conditional=True)"
            )
        check_compute_dtype(self.dtype, "disc.dtype")


# ----------------------------------------------------------------------------------------
# Network.


class Discriminator(nn.Module):
    """DCGAN-style critic: [k x k stride-2 conv -> leaky ReLU] * n -> flatten -> linear.

    Call with ``canvas`` [B, H, W, C] (and ``target`` of the same shape when
    conditional); returns float32 scores (logits) [B]. ``update_stats`` stores the
    advanced power-iteration vectors (needs ``mutable=["spectral"]``); leave it False
    inside losses and use `update_spectral_stats` after the update.
    """

    config: DiscriminatorConfig

    @nn.compact
    def __call__(
        self, canvas: Array, target: Array | None = None, *, update_stats: bool = False
    ) -> Array:
        cfg = self.config
        check_inputs(cfg, canvas, target)

        def apply_layer(layer: nn.Module, index: int, x: Array) -> Array:
            if not cfg.spectral_norm:
                return layer(x)
            sn = nn.SpectralNorm(
                layer, n_steps=cfg.power_iterations, collection_name=SPECTRAL, name=f"sn_{index}"
            )
            return sn(x, update_stats=update_stats)

        dtype = check_compute_dtype(cfg.dtype)
        h = canvas if target is None else jnp.concatenate([canvas, target], axis=-1)
        h = h.astype(dtype)
        k = cfg.kernel_size
        for i, width in enumerate(cfg.channels):
            even = h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0
            if cfg.cpu_friendly_conv and k == 4 and even:
                conv = layers.StridedConv(width, dtype=dtype, name=f"conv_{i}")
            else:
                conv = nn.Conv(
                    width,
                    (k, k),
                    strides=(2, 2),
                    padding="SAME",
                    kernel_init=sonnet_init(),
                    dtype=dtype,
                    param_dtype=jnp.float32,
                    name=f"conv_{i}",
                )
            h = nn.leaky_relu(apply_layer(conv, i, h), cfg.leaky_slope)
        h = h.reshape(h.shape[0], -1).astype(jnp.float32)
        # The score is the reward: its last layer runs in float32 even under bfloat16.
        dense = nn.Dense(1, kernel_init=sonnet_init(), dtype=jnp.float32, name="logit")
        return apply_layer(dense, len(cfg.channels), h)[:, 0]


def check_inputs(config: DiscriminatorConfig, canvas: Any, target: Any) -> None:
    """Raises ValueError unless ``canvas`` is [B, H, W, C] and ``target`` fits the config."""
    if getattr(canvas, "ndim", None) != 4:
        raise ValueError(
            f"canvas must be [B, H, W, C], got shape {getattr(canvas, 'shape', None)}"
        )
    if config.conditional:
        if target is None or tuple(target.shape) != tuple(canvas.shape):
            got = None if target is None else tuple(target.shape)
            raise ValueError(
                f"a conditional discriminator needs a target of the canvas's shape "
                f"{tuple(canvas.shape)}, got {got}"
            )
    elif target is not None:
        raise ValueError("a target was given but the discriminator is unconditional")


def make_discriminator(config: DiscriminatorConfig = DiscriminatorConfig()) -> Discriminator:
    """The module for `config` (which checked itself when it was built)."""
    return Discriminator(config=config)


def _dummy_inputs(
    config: DiscriminatorConfig, canvas_shape: tuple[int, ...], batch: int = 1
) -> tuple[Array, Array | None]:
    if len(canvas_shape) != 3 or min(canvas_shape) < 1:
        raise ValueError(f"canvas_shape must be (H, W, C) of positive sizes, got {canvas_shape}")
    canvas = jnp.ones((batch,) + tuple(canvas_shape), jnp.float32)
    return canvas, (canvas if config.conditional else None)


def init_variables(
    disc: Discriminator, key: Array, canvas_shape: tuple[int, int, int]
) -> dict[str, Any]:
    """Initialises D for canvases of ``canvas_shape`` (H, W, C); not traceable.

    Returns Flax variables: ``{"params": ...}``, plus ``{"spectral": ...}`` with
    spectral norm (each layer's power-iteration ``u`` ~ N(0, 1) and ``sigma`` = 1, as
    `flax.linen.SpectralNorm` initialises them). Kernels follow Sonnet 1's initialiser
    (truncated normal, sd 1/sqrt(fan_in), as the agent), biases are zero: the
    distribution of ``disc.init``, drawn as two vectors cut into pieces because XLA on a
    CPU spends ~0.1 s compiling every separate random draw (``disc.init`` takes ~3 s).
    """
    canvas, target = _dummy_inputs(disc.config, canvas_shape)
    shapes = jax.eval_shape(disc.init, jax.random.key(0), canvas, target)
    kernel_key, u_key = jax.random.split(key)
    variables = {"params": layers.init_from_one_draw(shapes["params"], kernel_key,
                                                     layers.sonnet_std)}
    if SPECTRAL in shapes:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes[SPECTRAL])
        sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
        flat = np.asarray(jax.jit(jax.random.normal, static_argnums=1)(u_key, (sum(sizes),)))
        pieces = np.split(flat, np.cumsum(sizes)[:-1])
        # u ~ N(0, 1) and sigma = 1, as flax.linen.SpectralNorm's initialisers set them.
        stats = [
            jnp.ones(leaf.shape, leaf.dtype) if path[-1].key.endswith("/sigma")
            else jnp.asarray(piece.reshape(leaf.shape), leaf.dtype)
            for piece, (path, leaf) in zip(pieces, leaves, strict=True)
        ]
        variables[SPECTRAL] = jax.tree_util.tree_unflatten(treedef, stats)
    return variables


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, Any]:
    """(params, spectral statistics or None)."""
    return variables["params"], variables.get(SPECTRAL)


def critic_fn(disc: Discriminator, spectral: Any = None) -> CriticFn:
    """``apply_fn(params, canvas, target) -> scores [B]`` for the losses and rewards.

    ``spectral`` (the statistics of a spectral-norm D) is held fixed: gradients flow
    only to ``params``.
    """
    if disc.config.spectral_norm and spectral is None:
        raise ValueError("a spectral-norm discriminator needs its 'spectral' statistics")
    if not disc.config.spectral_norm and spectral is not None:
        raise ValueError("spectral statistics were given but spectral_norm is off")

    def apply_fn(params: Any, canvas: Array, target: Array | None = None) -> Array:
        variables = {"params": params}
        if spectral is not None:
            variables[SPECTRAL] = spectral
        return disc.apply(variables, canvas, target)

    return apply_fn


def update_spectral_stats(
    disc: Discriminator, params: Any, spectral: Any, canvas_shape: tuple[int, int, int]
) -> Any:
    """Advances every layer's power iteration by ``power_iterations`` steps; pure.

    Runs D on one blank canvas with ``update_stats=True``; the statistics depend only
    on the kernels, so the input does not matter (it costs one tiny forward pass).
    Call it once per D step, after the parameter update.
    """
    if not disc.config.spectral_norm:
        raise ValueError("update_spectral_stats needs a discriminator with spectral_norm=True")
    canvas, target = _dummy_inputs(disc.config, canvas_shape)
    _, updates = disc.apply(
        {"params": params, SPECTRAL: spectral},
        canvas,
        target,
        update_stats=True,
        mutable=[SPECTRAL],
    )
    return updates[SPECTRAL]


def score_canvases(
    apply_fn: CriticFn, params: Any, canvases: Array, target: Array | None = None
) -> Array:
    """D's scores of canvases with any leading axes, e.g. [T + 1, B, H, W, C] -> [T + 1, B].

    ``target`` ([..., H, W, C]) is broadcast against the canvases' leading axes, so
    one target per episode [B, H, W, C] serves all its steps. One forward pass over
    the flattened batch (for `rewards.per_step_d_reward`).
    """
    if getattr(canvases, "ndim", 0) < 4:
        raise ValueError(
            f"canvases must be [..., B, H, W, C], got {getattr(canvases, 'shape', None)}"
        )
    lead, image = canvases.shape[:-3], canvases.shape[-3:]
    flat_target = None
    if target is not None:
        flat_target = jnp.broadcast_to(target, canvases.shape).reshape((-1,) + image)
    scores = apply_fn(params, canvases.reshape((-1,) + image), flat_target)
    return scores.astype(jnp.float32).reshape(lead)


