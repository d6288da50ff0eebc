"""SPIRAL's discriminator and its losses (Ganin et al., ICML 2018; Mellor et al., 2019).

The network is a DCGAN-style critic (Radford et al., 2016; SPIRAL App. B): a stack of
4x4 stride-2 convolutions, each followed by a leaky ReLU (slope 0.2), then a linear
layer to one score per image. For 64x64 canvases the paper-sized widths are
64-128-256-512 (64 -> 32 -> 16 -> 8 -> 4, then 4 * 4 * 512 -> 1). There is no batch
normalisation anywhere: the WGAN-GP penalty is defined per example and batch
statistics would couple the examples (Gulrajani et al., 2017, Sec. 4), and it would
make a real/fake batch's scores depend on each other.

Two training set-ups are provided:

* SPIRAL: the Wasserstein critic loss with a gradient penalty (WGAN-GP, Gulrajani et
  al., 2017), weight 1.0 and target norm 1.0 in SPIRAL's snapshots, plus a small
  "drift" term ``drift_weight * E[D(real)^2]`` that keeps the critic's scores near 0
  (the form of Karras et al., 2018, Progressive GAN, Sec. A.1, eps_drift = 0.001;
  SPIRAL used a term of this kind, its weight is not published). The reward is the
  critic's score D(x).
* SPIRAL++ (Mellor et al., 2019): spectral normalisation of every conv and linear
  kernel (Miyato et al., 2018) with the standard GAN loss (Goodfellow et al., 2014),
  sigmoid cross-entropy on D's logit. See `generator_reward` for the reward.

Conditional discriminators judge (canvas, target) pairs, concatenated on channels:
a real pair is (target, target), a fake pair (canvas, target).

Functional interface. Every loss takes a *critic function*
``apply_fn(params, canvas, target) -> scores`` (float32 [B]; ``target`` is None for
an unconditional D) and the parameters to differentiate. `critic_fn` builds one
from a `Discriminator` and its (frozen) spectral-norm statistics. The losses call D
once on real and fake concatenated, and once on the interpolates (WGAN-GP).

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

from spiral_jax.agent import conv_4x4_s2, sonnet_init

Array = jax.Array
#: (params, canvas [B, H, W, C], target [B, H, W, C] or None) -> scores float32 [B].
CriticFn = Callable[[Any, Array, Array | None], Array]

SPECTRAL = "spectral"  # the Flax collection of the spectral-norm statistics
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LOSSES = ("wgan_gp", "gan")
GAN_REWARDS = ("logit", "log_sigmoid")
# Added under the square root of the gradient norm: d sqrt(s)/ds is infinite at s = 0
# (a critic that is flat at an interpolate would give a NaN gradient).
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes and options of the discriminator. Defaults are SPIRAL's (see `PAPER`).

    Attributes:
      channels: widths of the stride-2 convolutions, in order (paper: 64, 128, 256,
        512 for 64x64 canvases). An empty tuple gives a linear critic (flatten ->
        linear), useful in tests.
      kernel_size: side of every convolution kernel (4, as DCGAN).
      leaky_slope: negative slope of the leaky ReLUs (0.2, as DCGAN).
      spectral_norm: divide every conv and linear kernel by its largest singular value
        (SPIRAL++). Convolution kernels [k, k, C_in, C_out] are reshaped to
        [k * k * C_in, C_out], as Miyato et al. do.
      power_iterations: power-iteration steps per forward pass (Miyato et al.: 1).
      conditional: the D sees (canvas, target) pairs, concatenated on channels.
      dtype: compute dtype, "float32" or "bfloat16". Parameters and the spectral
        statistics stay float32; the last linear layer and the output are float32.
      cpu_friendly_conv: compute 4x4 stride-2 layers on even-sized inputs with
        `spiral_jax.agent.conv_4x4_s2`: the same function and parameters as
        `flax.linen.Conv`, but its input gradient avoids the input-dilated convolution
        that XLA's CPU backend runs slowly. The gradient penalty differentiates
        through input gradients, so on a 2-core CPU this makes the paper-sized WGAN-GP
        step about 3.5x faster. Other layers (odd sizes, other kernels) use nn.Conv.
    """

    channels: tuple[int, ...] = (64, 128, 256, 512)
    kernel_size: int = 4
    leaky_slope: float = 0.2
    spectral_norm: bool = False
    power_iterations: int = 1
    conditional: bool = False
    dtype: str = "float32"
    cpu_friendly_conv: bool = True

    def validate(self) -> None:
        """Raises ValueError for options the network cannot be built with."""
        if not isinstance(self.channels, tuple) or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1
            for c in self.channels
        ):
            raise ValueError(
                f"DiscriminatorConfig.channels must be a tuple of positive ints, "
                f"got {self.channels!r}"
            )
        if not isinstance(self.kernel_size, (int, np.integer)) or self.kernel_size < 1:
            raise ValueError(
                f"DiscriminatorConfig.kernel_size must be a positive int, got {self.kernel_size!r}"
            )
        if not isinstance(self.leaky_slope, (int, float)) or not 0 <= self.leaky_slope < 1:
            raise ValueError(
                f"DiscriminatorConfig.leaky_slope must be in [0, 1), got {self.leaky_slope!r}"
            )
        if not isinstance(self.spectral_norm, bool):
            raise ValueError(
                f"DiscriminatorConfig.spectral_norm must be a bool, got {self.spectral_norm!r}"
            )
        if not isinstance(self.power_iterations, (int, np.integer)) or self.power_iterations < 1:
            raise ValueError(
                f"DiscriminatorConfig.power_iterations must be an int >= 1, "
                f"got {self.power_iterations!r}"
            )
        if not isinstance(self.conditional, bool):
            raise ValueError(
                f"DiscriminatorConfig.conditional must be a bool, got {self.conditional!r}"
            )
        if not isinstance(self.cpu_friendly_conv, bool):
            raise ValueError(
                f"DiscriminatorConfig.cpu_friendly_conv must be a bool, "
                f"got {self.cpu_friendly_conv!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(
                f"DiscriminatorConfig.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}"
            )


#: SPIRAL's discriminator for 64x64 canvases (DCGAN widths, WGAN-GP, float32).
PAPER = DiscriminatorConfig()
#: SPIRAL++'s set-up: the same widths with spectral normalisation (standard GAN loss).
PAPER_SN = DiscriminatorConfig(spectral_norm=True)
#: A variant that trains on a CPU at 28x28 to 64x64: 16-32-64.
SMALL = DiscriminatorConfig(channels=(16, 32, 64))


# ----------------------------------------------------------------------------------------
# Network.


class StridedConv4x4(nn.Module):
    """4x4 stride-2 SAME conv with bias via `conv_4x4_s2` (even H and W only).

    Parameters are named and shaped as `flax.linen.Conv`'s (``kernel`` [4, 4, C_in,
    C_out], ``bias``), so the two are interchangeable.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", sonnet_init(), (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return conv_4x4_s2(x, kernel) + bias


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

        dtype = DTYPES[cfg.dtype]
        h = canvas if target is None else jnp.concatenate([canvas, target], axis=-1)
        h = h.astype(dtype)
        k = cfg.kernel_size
        for i, width in enumerate(cfg.channels):
            even = h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0
            if cfg.cpu_friendly_conv and k == 4 and even:
                conv = StridedConv4x4(width, dtype=dtype, name=f"conv_{i}")
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


def make_discriminator(config: DiscriminatorConfig = PAPER) -> Discriminator:
    """Checks the config and builds the module."""
    config.validate()
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
    disc.config.validate()
    canvas, target = _dummy_inputs(disc.config, canvas_shape)
    shapes = jax.eval_shape(disc.init, jax.random.key(0), canvas, target)
    kernel_key, u_key = jax.random.split(key)

    def fill(tree: Any, draw: Callable[..., Array], key: Array, scale: Callable) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
        flat = np.asarray(jax.jit(draw, static_argnums=1)(key, (max(sum(sizes), 1),)))
        pieces = np.split(flat[: sum(sizes)], np.cumsum(sizes)[:-1])
        out = [
            jnp.asarray((piece * scale(path, leaf.shape)).reshape(leaf.shape), leaf.dtype)
            for piece, (path, leaf) in zip(pieces, leaves, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    def kernel_scale(path: tuple[Any, ...], shape: tuple[int, ...]) -> np.float32:
        if path[-1].key == "bias":
            return np.float32(0.0)
        return np.float32(1.0 / np.sqrt(np.prod(shape[:-1])))

    def truncated(key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)

    variables = {"params": fill(shapes["params"], truncated, kernel_key, kernel_scale)}
    if SPECTRAL in shapes:
        stats = fill(shapes[SPECTRAL], jax.random.normal, u_key, lambda p, s: np.float32(1.0))
        # sigma starts at 1, as flax.linen.SpectralNorm's initialiser sets it.
        variables[SPECTRAL] = jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.ones_like(x) if p[-1].key.endswith("/sigma") else x, stats
        )
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


# ----------------------------------------------------------------------------------------
# Losses.


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
