"""The discriminator's learner: Adam on WGAN-GP or the GAN loss, real images against a
replay of the agent's final canvases (SPIRAL: a replay of 20 batches, sampled
uniformly), at its own rate (`updates_per_step`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from spiral_jax import discriminator as disc_lib
from spiral_jax import gan_losses
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
    drift_weight: float = 1e-3  # weight of mean D(real)^2, keeps the critic near 0
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
) -> tuple[tuple[Any, Any, Any], dict[str, Array]]:
    """`cfg.updates_per_step` D updates (inside `shard_map`): each draws `batch_size`
    (global) real images and replayed canvases, and averages gradients over the mesh.
    Returns (params, spectral statistics, optimiser state) and the last update's
    metrics."""
    conditional = disc.config.conditional
    metrics = {}
    # A Python loop, not lax.scan (see `policy_learner.update`).
    for update_key in jax.random.split(key, cfg.updates_per_step):
        k_real, k_fake, k_eps = jax.random.split(update_key, 3)
        real = sample_images(images, global_keys(k_real, batch_size), AXIS)
        fake, fake_target = sample_replay(replay, global_keys(k_fake, batch_size))
        eps = jax.vmap(lambda k: jax.random.uniform(k, ()))(global_keys(k_eps, batch_size))
        critic = disc_lib.critic_fn(disc, spectral)

        def loss_fn(p, critic=critic, real=real, fake=fake, fake_target=fake_target, eps=eps):
            return gan_losses.discriminator_loss(
                cfg.loss, critic, p, real, fake, None,
                fake_target=fake_target if conditional else None,
                gp_weight=cfg.gp_weight, gp_target=cfg.gp_target,
                drift_weight=cfg.drift_weight, eps=eps,
            )

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = jax.lax.pmean(grads, AXIS)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if spectral is not None:
            spectral = disc_lib.update_spectral_stats(
                disc, params, spectral, real.shape[1:]
            )
    return (params, spectral, opt_state), metrics
