"""Tests of the discriminator's learner (spiral_jax.disc_learner): its config, how it
draws real and replayed examples, and one Adam step against a closed form."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from spiral_jax import disc_learner as DL
from spiral_jax import discriminator as D
from spiral_jax import replay as replay_lib
from spiral_jax.sharding import make_mesh

REPO = pathlib.Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------
# DiscLearnerConfig.


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss", "hinge", r"disc_learner.loss='hinge': allowed: \('wgan_gp', 'gan'\)"),
        ("learning_rate", 0.0, r"disc_learner\.learning_rate=0\.0: must be a number > 0"),
        ("learning_rate", -1e-4, r"disc_learner\.learning_rate=-0\.0001: must be a number > 0"),
        ("b2", 1.0, r"disc_learner\.b2=1\.0: must be a number in \[0, 1\)"),
        ("gp_target", -1.0, r"disc_learner\.gp_target=-1\.0: must be >= 0"),
        ("gp_weight", -1.0, r"disc_learner\.gp_weight=-1\.0: must be >= 0"),
        ("drift_weight", -0.001, r"disc_learner\.drift_weight=-0\.001: must be >= 0"),
        ("updates_per_step", -1, r"disc_learner\.updates_per_step=-1: must be an int >= 0"),
        ("updates_per_step", 1.5, r"disc_learner\.updates_per_step=1\.5: must be an int >= 0"),
        ("replay_batches", 0, r"disc_learner\.replay_batches=0: must be an int >= 1"),
        ("replay_batches", 2.0, r"disc_learner\.replay_batches=2\.0: must be an int >= 1"),
    ],
)
def test_config_raises_one_line_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        DL.DiscLearnerConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_config_defaults_are_spirals():
    cfg = DL.DiscLearnerConfig()
    assert (cfg.loss, cfg.gp_weight, cfg.gp_target, cfg.learning_rate, cfg.b1) == (
        "wgan_gp", 1.0, 1.0, 1e-4, 0.5)
    assert (cfg.updates_per_step, cfg.replay_batches) == (1, 20)
    hash(cfg)  # a static argument of the jitted step
    # D need not be trained at all (updates_per_step 0), and the GAN loss is allowed.
    DL.DiscLearnerConfig(updates_per_step=0, loss="gan")


# ----------------------------------------------------------------------------------------
# What D is trained on.


def test_sample_images_draws_whole_images_per_key_as_k_over_255():
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 2, 1), np.uint8)
    images = images * 50 + np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    keys = jax.random.split(jax.random.key(0), 400)
    got = np.asarray(jax.jit(DL.sample_images)(jnp.asarray(images), keys))
    assert got.shape == (400, 2, 2, 1) and got.dtype == np.float32
    index = (np.round(got[:, 0, 0, 0] * 255).astype(int)) // 50
    np.testing.assert_array_equal(got, images[index].astype(np.float32) / np.float32(255))
    assert set(index) == set(range(5))  # every image is drawn
    # One image per key: the first draws do not depend on how many keys follow.
    again = np.asarray(jax.jit(DL.sample_images)(jnp.asarray(images), keys[:7]))
    np.testing.assert_array_equal(again, got[:7])


def test_sample_replay_takes_column_i_of_a_stored_batch():
    batch, shape = 4, (2, 2, 1)
    replay = replay_lib.init(5 * batch, shape, conditional=True)
    # Stored batch r, column i: the canvas filled with (10 r + i) / 255; target 1 - that.
    for r in range(3):
        canvases = (10 * r + np.arange(batch, dtype=np.float32))[:, None, None, None] / 255
        canvases = np.broadcast_to(canvases, (batch,) + shape)
        replay = replay_lib.add(replay, jnp.asarray(canvases), jnp.asarray(1.0 - canvases))
    rows = set()
    sample = jax.jit(DL.sample_replay)
    for seed in range(30):
        fake, target = sample(replay, jax.random.split(jax.random.key(seed), batch))
        code = np.round(np.asarray(fake)[:, 0, 0, 0] * 255).astype(int)
        row, column = np.divmod(code, 10)
        np.testing.assert_array_equal(column, np.arange(batch))  # example i <- column i
        assert np.all(row < 3)  # only stored batches, never the empty slots
        np.testing.assert_allclose(np.asarray(target), 1.0 - np.asarray(fake), atol=1 / 255)
        rows.update(row.tolist())
    assert rows == {0, 1, 2}


# ----------------------------------------------------------------------------------------
# One update.


def test_one_wgan_step_is_adams_first_step_on_the_closed_form_gradient():
    """A linear critic D(x) = <w, x> + b on one real image and one replayed canvas: the
    WGAN loss's gradient is (fake - real) for w and 0 for b, and Adam's first step is
    -lr * g / (|g| + eps) exactly (bias corrections cancel)."""
    shape, batch = (4, 4, 1), 4
    disc = D.make_discriminator(D.DiscriminatorConfig(channels=()))
    params = D.init_variables(disc, jax.random.key(0), shape)["params"]
    cfg = DL.DiscLearnerConfig(gp_weight=0.0, drift_weight=0.0, learning_rate=0.01, eps=0.1)
    optimizer = DL.make_optimizer(cfg)
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, size=shape).astype(np.uint8)
    images = jnp.asarray(np.broadcast_to(real, (3,) + shape))  # every draw is `real`
    fake = np.round(rng.uniform(size=shape) * 255) / 255
    replay = replay_lib.add(replay_lib.init(2 * batch, shape),
                            jnp.asarray(np.broadcast_to(fake, (batch,) + shape), jnp.float32))

    def step(params, opt_state, images, replay, key):
        (params, spectral, opt_state), metrics = DL.update(
            params, None, opt_state, disc, cfg, optimizer, images, replay, key, batch)
        assert spectral is None
        return params, metrics

    sharded = jax.jit(jax.shard_map(step, mesh=make_mesh(), in_specs=P(), out_specs=P(),
                                    check_vma=False))
    new, metrics = sharded(params, optimizer.init(params), images, replay, jax.random.key(2))

    g = (fake - real / 255.0).reshape(-1)
    want = np.asarray(params["logit"]["kernel"], np.float64)[:, 0] - 0.01 * g / (np.abs(g) + 0.1)
    np.testing.assert_allclose(np.asarray(new["logit"]["kernel"])[:, 0], want, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(new["logit"]["bias"]), 0.0, atol=1e-7)
    w = np.asarray(params["logit"]["kernel"], np.float64)[:, 0]
    d_real, d_fake = real.reshape(-1) / 255.0 @ w, fake.reshape(-1) @ w
    assert float(metrics["wasserstein"]) == pytest.approx(d_real - d_fake, rel=1e-4, abs=1e-6)
    assert float(metrics["d_loss"]) == pytest.approx(d_fake - d_real, rel=1e-4, abs=1e-6)


_SHARDED_DRAWS = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from spiral_jax import datasets, device_data, disc_learner as DL
    from spiral_jax.sharding import AXIS, make_mesh
    images = np.random.default_rng(0).integers(0, 256, (12, 3, 3, 1), dtype=np.uint8)
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    whole = np.asarray(jax.jit(DL.sample_images)(images, keys))
    mesh = make_mesh()
    assert mesh.devices.size == 4
    local = lambda im, k: DL.sample_images(im, k, AXIS)
    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
                                    out_specs=P(AXIS), check_vma=False))
    data = device_data.to_device(datasets.ImageDataset(
        name="t", split="train", images=images, labels=np.zeros(12, np.int32),
        indices=np.arange(12), num_classes=None), NamedSharding(mesh, P(AXIS)))
    got = np.asarray(sharded(data.images, keys))
    np.testing.assert_array_equal(got, whole)
    idx = np.array([0, 11, 5, 6, 6, 3])  # the same rows asked on every device
    every = jax.jit(jax.shard_map(
        lambda im: device_data.take_sharded(im, idx, AXIS, scatter=False), mesh=mesh,
        in_specs=P(AXIS), out_specs=P(), check_vma=False))
    np.testing.assert_array_equal(np.asarray(every(data.images)), images[idx] / np.float32(255))
    print("OK")
    """
)


def test_draws_from_a_sharded_dataset_equal_the_unsharded_draws():
    env = dict(os.environ, PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", _SHARDED_DRAWS], env=env, capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]
