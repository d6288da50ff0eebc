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
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from spiral_jax import complement as C
from spiral_jax import disc_learner as DL
from spiral_jax import discriminator as D
from spiral_jax import gan_losses as G
from spiral_jax import replay as replay_lib
from spiral_jax.sharding import AXIS, make_mesh

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


def _conditional_setup(complement: bool, batch: int = 4, shape=(8, 8, 1)):
    """A small conditional D, a dataset of 6 images and a replay of 2 batches."""
    config = D.DiscriminatorConfig(channels=(4,), conditional=True, complement=complement)
    disc = D.make_discriminator(config)
    params = D.init_variables(disc, jax.random.key(0), shape)["params"]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (6,) + shape, dtype=np.uint8))
    replay = replay_lib.init(2 * batch, shape, conditional=True)
    for _ in range(2):
        replay = replay_lib.add(replay, jnp.asarray(rng.uniform(size=(batch,) + shape),
                                                    jnp.float32),
                                jnp.asarray(rng.uniform(size=(batch,) + shape), jnp.float32))
    return disc, params, images, replay


def _run_update(disc, cfg, params, images, replay, key, batch, mesh=None, **kwargs):
    optimizer = DL.make_optimizer(cfg)

    def step(params, opt_state, images, replay, key):
        (params, _, _), metrics = DL.update(params, None, opt_state, disc, cfg, optimizer,
                                            images, replay, key, batch, **kwargs)
        return params, metrics

    sharded = jax.jit(jax.shard_map(step, mesh=make_mesh() if mesh is None else mesh,
                                    in_specs=P(), out_specs=P(), check_vma=False))
    return sharded(params, optimizer.init(params), images, replay, key)


@pytest.mark.parametrize("complement", [False, True])
def test_update_optimises_the_loss_of_the_pairs_drawn_from_its_keys(complement):
    """The D loss inside `update` is `discriminator_loss` on pairs built here by hand
    from the same keys: (target, target) against (canvas, target) for a conditional D,
    SPIRAL++'s half-image pairs for a complement D (the masks from a 4th split of the
    update's key, so the other draws keep their keys)."""
    batch, shape = 4, (8, 8, 1)
    disc, params, images, replay = _conditional_setup(complement, batch, shape)
    cfg = DL.DiscLearnerConfig(drift_weight=0.1)
    key = jax.random.key(3)
    new, metrics = _run_update(disc, cfg, params, images, replay, key, batch)
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True))
    assert moved > 1e-6 and np.isfinite(float(metrics["d_loss"]))

    # One device: global_keys(k, n) is split(k, n).
    (update_key,) = jax.random.split(key, 1)
    k_real, k_fake, k_eps = jax.random.split(update_key, 3)
    real = DL.sample_images(images, jax.random.split(k_real, batch))
    fake, fake_target = DL.sample_replay(replay, jax.random.split(k_fake, batch))
    eps = jax.vmap(lambda k: jax.random.uniform(k, ()))(jax.random.split(k_eps, batch))
    real_np, fake_np, fake_target_np = (np.asarray(x) for x in (real, fake, fake_target))
    if complement:
        k_mask_real, k_mask_fake = jax.random.split(jax.random.split(update_key, 4)[3])
        m_real = np.asarray(C.sample_masks(jax.random.split(k_mask_real, batch), 8, 8))
        m_fake = np.asarray(C.sample_masks(jax.random.split(k_mask_fake, batch), 8, 8))
        pairs = dict(real=m_real * real_np, real_target=(1 - m_real) * real_np,
                     fake=m_fake * fake_np, fake_target=(1 - m_fake) * fake_target_np)
        assert not np.array_equal(pairs["real"], real_np)  # the masks were applied
    else:
        pairs = dict(real=real_np, real_target=None, fake=fake_np, fake_target=fake_target_np)
    pairs = {k: None if v is None else jnp.asarray(v) for k, v in pairs.items()}
    want, want_metrics = G.discriminator_loss(
        cfg.loss, D.critic_fn(disc), params, pairs["real"], pairs["fake"], None,
        fake_target=pairs["fake_target"], real_target=pairs["real_target"],
        gp_weight=cfg.gp_weight, gp_target=cfg.gp_target, drift_weight=cfg.drift_weight,
        eps=eps)
    for name in ("d_loss", "d_real", "d_fake", "gradient_penalty", "drift"):
        assert float(metrics[name]) == pytest.approx(float(want_metrics[name]), rel=1e-5,
                                                     abs=1e-6), name
    assert float(metrics["d_loss"]) == pytest.approx(float(want), rel=1e-5, abs=1e-6)


def test_training_pairs_by_kind_of_discriminator():
    batch, shape = 4, (6, 6, 2)
    real, fake, target = (jnp.asarray(np.random.default_rng(i).uniform(size=(batch,) + shape),
                                      jnp.float32) for i in range(3))
    key = jax.random.key(1)

    def pairs(config, fake_target=target):
        local = lambda r, f, t: DL.training_pairs(config, r, f, t, key, batch)  # noqa: E731
        return jax.shard_map(local, mesh=make_mesh(), in_specs=P(), out_specs=P(),
                             check_vma=False)(real, fake, fake_target)

    plain = D.DiscriminatorConfig(channels=(4,))
    got = pairs(plain)
    assert got[1] is None and got[3] is None
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(real))
    conditional = D.DiscriminatorConfig(channels=(4,), conditional=True)
    got = pairs(conditional)
    assert got[1] is None  # the losses pair real images with themselves
    np.testing.assert_array_equal(np.asarray(got[3]), np.asarray(target))
    with pytest.raises(ValueError, match="stores targets"):
        pairs(conditional, fake_target=None)
    got = pairs(D.DiscriminatorConfig(channels=(4,), conditional=True, complement=True))
    k_real, k_fake = jax.random.split(key)
    m_real = np.asarray(C.sample_masks(jax.random.split(k_real, batch), 6, 6))
    m_fake = np.asarray(C.sample_masks(jax.random.split(k_fake, batch), 6, 6))
    want = (m_real * real, (1 - m_real) * real, m_fake * fake, (1 - m_fake) * target)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(got[0] + got[1]), np.asarray(real))


def test_update_averages_over_a_tuple_of_axes():
    """``axis_name`` may name several mesh axes (e.g. a population sharing one D); on
    a mesh of one device the update equals the default's."""
    batch = 4
    disc, params, images, replay = _conditional_setup(True, batch)
    cfg = DL.DiscLearnerConfig()
    key = jax.random.key(4)
    want, want_metrics = _run_update(disc, cfg, params, images, replay, key, batch)
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("population", AXIS))
    got, metrics = _run_update(disc, cfg, params, images, replay, key, batch, mesh=mesh,
                               axis_name=("population", AXIS))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert float(metrics["d_loss"]) == pytest.approx(float(want_metrics["d_loss"]), rel=1e-6)


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


_SHARDED_COMPLEMENT_UPDATE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from spiral_jax import discriminator as D, disc_learner as DL, replay as replay_lib
    from spiral_jax.sharding import AXIS, make_mesh
    assert jax.device_count() == 4
    batch, shape = 8, (8, 8, 1)
    disc = D.make_discriminator(D.DiscriminatorConfig(channels=(4,), conditional=True,
                                                      complement=True))
    params = D.init_variables(disc, jax.random.key(0), shape)["params"]
    # eps = 1 keeps Adam's first step linear in the gradient (no sign flips at rounding).
    cfg = DL.DiscLearnerConfig(drift_weight=0.5, eps=1.0)
    optimizer = DL.make_optimizer(cfg)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12,) + shape, dtype=np.uint8)
    canvases = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
    targets = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
    def run(devices):
        mesh = make_mesh(devices)
        n = mesh.devices.size
        # One stored batch: device d holds columns d * batch / n onwards (as it painted
        # them) and has counted its own batch / n canvases.
        replay = replay_lib.Replay(canvases=jnp.asarray(canvases), targets=jnp.asarray(targets),
                                   pointer=jnp.int32(0), count=jnp.int32(batch // n))
        spec = replay_lib.Replay(canvases=P(AXIS), targets=P(AXIS), pointer=P(), count=P())
        def step(params, images, replay, key):
            (new, _, _), metrics = DL.update(params, None, optimizer.init(params), disc, cfg,
                                             optimizer, images, replay, key, batch)
            return new, jax.lax.pmean(metrics, AXIS)
        f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), spec, P()),
                                  out_specs=P(), check_vma=False))
        return jax.device_get(f(params, jnp.asarray(images), replay, jax.random.key(7)))
    one, m1 = run(jax.devices()[:1])
    four, m4 = run(jax.devices())
    init = jax.tree.leaves(params)
    moved = max(float(np.max(np.abs(a - z))) for a, z in zip(jax.tree.leaves(one), init))
    worst = max(float(np.max(np.abs(a - b)))
                for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)))
    print("moved", moved, "worst", worst, "drift", m1["drift"], m4["drift"])
    assert moved > 1e-6 and worst < 1e-3 * moved, (moved, worst)
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert m1["drift"] > 1e-4  # the drift's global mean was at stake
    print("OK")
    """
)


def test_complement_update_on_four_devices_equals_one_device():
    """Masks drawn per example and the drift's mean over the mesh: a complement D's
    update on 4 devices equals the update on one, the same global batch."""
    env = dict(os.environ, PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", _SHARDED_COMPLEMENT_UPDATE], env=env,
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]
