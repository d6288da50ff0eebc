"""The discriminator's learner: Adam on WGAN-GP or the GAN loss, real images against a
replay of the agent's final canvases (SPIRAL: a replay of 20 batches, sampled
uniformly), at its own rate (`updates_per_step`). A complement discriminator
(SPIRAL++, Mellor et al., 2019, Sec. 3.3; `spiral_jax.complement`) is trained on
half-image pairs, masks drawn per example (`training_pairs`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from spiral_jax import complement, gan_losses
from spiral_jax import discriminator as disc_lib
from spiral_jax import replay as replay_lib
from spiral_jax.device_data import take_sharded, to_float
from spiral_jax.nonfinite import skip_nonfinite
from spiral_jax.sharding import AXIS, global_keys
from spiral_jax.types import Array, check_adam, is_int


@dataclasses.dataclass(frozen=True)
class DiscLearnerConfig:
    """D's loss, optimiser and replay; `config.disc_learner` holds these fields."""

    loss: str = "wgan_gp"  # wgan_gp (SPIRAL) | gan (SPIRAL++, with disc.spectral_norm)
    gp_weight: float = 1.0  # WGAN-GP penalty weight (SPIRAL 1; Gulrajani et al. 10)
    gp_target: float = 1.0  # the gradient norm the penalty pulls towards
    # weight of (mean D over real and fake)^2: pins the critic's free additive constant
    # (its mean score) near 0, not its spread
    drift_weight: float = 1e-3
    learning_rate: float = 1e-4  # Adam (SPIRAL)
    b1: float = 0.5  # Adam's beta1 (SPIRAL)
    b2: float = 0.999  # Adam's beta2
    eps: float = 1e-8  # Adam's epsilon
    updates_per_step: int = 1  # D updates per train step; 0 = D is not trained
    replay_batches: int = 20  # batches of final canvases kept for D's fake side

    def __post_init__(self) -> None:
        if self.loss not in gan_losses.LOSSES:
            raise ValueError(f"disc_learner.loss={self.loss!r}: allowed: {gan_losses.LOSSES}")
        check_adam("disc_learner", self.learning_rate, self.b1, self.b2, self.eps)
        for name in ("gp_weight", "gp_target", "drift_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"disc_learner.{name}={getattr(self, name)!r}: must be >= 0")
        if not is_int(self.updates_per_step) or self.updates_per_step < 0:
            raise ValueError(
                f"disc_learner.updates_per_step={self.updates_per_step!r}: must be an int >= 0"
            )
        if not is_int(self.replay_batches) or self.replay_batches < 1:
            raise ValueError(
                f"disc_learner.replay_batches={self.replay_batches!r}: must be an int >= 1"
            )


def make_optimizer(cfg: DiscLearnerConfig) -> optax.GradientTransformation:
    """Adam; updates with non-finite gradients are skipped (`skip_nonfinite`)."""
    return skip_nonfinite(optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))


def sample_images(images: Array, keys: Array, axis: str | None = None) -> Array:
    """One uniformly drawn image per key, float32 [len(keys), H, W, C].

    With `axis` (inside `shard_map`), `images` is this device's block of a dataset
    sharded over that mesh axis in equal blocks: each key still draws from the whole
    dataset, and the images equal the unsharded draw's exactly (`take_sharded`).
    """
    shards = 1 if axis is None else jax.lax.axis_size(axis)
    total = images.shape[0] * shards
    idx = jax.vmap(lambda k: jax.random.randint(k, (), 0, total))(keys)
    if axis is None:
        return to_float(jnp.take(images, idx, axis=0))
    return take_sharded(images, idx, axis)


def sample_replay(replay: replay_lib.Replay, keys: Array) -> tuple[Array, Array | None]:
    """Fake examples for D: example i comes from column i of a random stored batch.

    The replay holds whole (local) batches in order (slot = row * batch + column), so
    drawing a row per column is uniform over the stored batches and needs no data from
    other devices; with per-example keys it does not depend on the device count.
    """
    batch = keys.shape[0]
    rows = jnp.maximum(replay.count // batch, 1)
    row = jax.vmap(lambda k: jax.random.randint(k, (), 0, rows))(keys)
    return replay_lib.take(replay, row * batch + jnp.arange(batch))


def training_pairs(
    config: disc_lib.DiscriminatorConfig,
    real: Array,
    fake: Array,
    fake_target: Array | None,
    key: Array,
    batch_size: int,
) -> tuple[Array, Array | None, Array, Array | None]:
    """(real, real_target, fake, fake_target) for `gan_losses.discriminator_loss`
    (inside `shard_map`; ``real`` and ``fake`` are this device's examples).

    An unconditional D gets (real, None, fake, None); a conditional one (real, None,
    fake, fake_target), the losses pairing the real images with themselves. A
    complement D (`complement`) gets SPIRAL++'s half-image pairs, (m * real,
    (1 - m) * real) and (m' * fake, (1 - m') * fake_target), with masks m and m'
    drawn independently per example from ``key`` (split in two, then over the
    ``batch_size`` global examples by `global_keys`: they do not depend on the
    device count).
    """
    if not config.conditional:
        return real, None, fake, None
    if fake_target is None:
        raise ValueError("a conditional discriminator needs a replay that stores targets")
    if not config.complement:
        return real, None, fake, fake_target
    k_real, k_fake = jax.random.split(key)
    height, width = real.shape[1:3]
    real_masks = complement.sample_masks(global_keys(k_real, batch_size), height, width)
    fake_masks = complement.sample_masks(global_keys(k_fake, batch_size), height, width)
    real_half, real_target = complement.pairs(real, real, real_masks)
    fake_half, fake_target = complement.pairs(fake, fake_target, fake_masks)
    return real_half, real_target, fake_half, fake_target


def update(
    params: Any,
    spectral: Any,
    opt_state: Any,
    disc: disc_lib.Discriminator,
    cfg: DiscLearnerConfig,
    optimizer: optax.GradientTransformation,
    images: Array,
    replay: replay_lib.Replay,
    key: Array,
    batch_size: int,
    *,
    axis_name: str | tuple[str, ...] = AXIS,
) -> tuple[tuple[Any, Any, Any], dict[str, Array]]:
    """`cfg.updates_per_step` D updates (inside `shard_map`): each draws `batch_size`
    (global) real images and replayed canvases (as `training_pairs` for a conditional
    or complement D), and averages gradients over ``axis_name``.

    ``axis_name`` is the mesh axis, or tuple of axes, whose devices train this one D
    together: gradients are averaged over it (`lax.pmean`), and so is the WGAN drift
    term's mean score (`gan_losses.wgan_gp_loss`). The default, the data axis, is the
    data-parallel D; a tuple that adds e.g. a population axis shares one D across the
    population (every device of it must then hold the same D parameters). The draws
    themselves are per example over the data axis (`global_keys`).

    Returns (params, spectral statistics, optimiser state) and the last update's
    metrics.
    """
    metrics = {}
    # A Python loop, not lax.scan (see `policy_learner.update`).
    for update_key in jax.random.split(key, cfg.updates_per_step):
        k_real, k_fake, k_eps = jax.random.split(update_key, 3)
        # The masks' key is a 4th split, so the 3 draws above keep their keys (and a
        # run without a complement D its numbers).
        k_mask = jax.random.split(update_key, 4)[3]
        real = sample_images(images, global_keys(k_real, batch_size), AXIS)
        fake, fake_target = sample_replay(replay, global_keys(k_fake, batch_size))
        eps = jax.vmap(lambda k: jax.random.uniform(k, ()))(global_keys(k_eps, batch_size))
        real, real_target, fake, fake_target = training_pairs(
            disc.config, real, fake, fake_target, k_mask, batch_size
        )
        critic = disc_lib.critic_fn(disc, spectral)

        def loss_fn(p, critic=critic, real=real, real_target=real_target, fake=fake,
                    fake_target=fake_target, eps=eps):
            return gan_losses.discriminator_loss(
                cfg.loss, critic, p, real, fake, None,
                fake_target=fake_target, real_target=real_target,
                gp_weight=cfg.gp_weight, gp_target=cfg.gp_target,
                drift_weight=cfg.drift_weight, eps=eps, axis_name=axis_name,
            )

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if spectral is not None:
            spectral = disc_lib.update_spectral_stats(
                disc, params, spectral, real.shape[1:]
            )
    return (params, spectral, opt_state), metrics
