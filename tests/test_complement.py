"""Tests of SPIRAL++'s complement discriminator's masks and pairs (spiral_jax.complement):
the masks' geometry and frequencies, per-key determinism, and the pairs against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import complement as C
from spiral_jax import discriminator as D


def _halves_np(height: int, width: int) -> dict[str, np.ndarray]:
    """The four halves as numpy [H, W, 1] float masks, written out by hand."""
    out = {h: np.zeros((height, width, 1), np.float32) for h in C.HALVES}
    out["left"][:, : width // 2] = 1
    out["right"][:, width // 2:] = 1
    out["top"][: height // 2] = 1
    out["bottom"][height // 2:] = 1
    return out


def _images(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Masks.


@pytest.mark.parametrize("height, width", [(8, 8), (4, 6), (2, 10)])
def test_every_mask_is_exactly_one_of_the_four_halves(height, width):
    masks = np.asarray(jax.jit(C.sample_masks, static_argnums=(1, 2))(
        jax.random.split(jax.random.key(0), 64), height, width))
    assert masks.shape == (64, height, width, 1) and masks.dtype == np.float32
    assert set(np.unique(masks)) == {0.0, 1.0}
    np.testing.assert_array_equal(masks.sum(axis=(1, 2, 3)), height * width // 2)
    halves = _halves_np(height, width)
    for m in masks:
        assert sum(np.array_equal(m, h) for h in halves.values()) == 1
    np.testing.assert_array_equal(np.asarray(C.half_masks(height, width)),
                                  np.stack([halves[h] for h in C.HALVES]))


def test_the_four_halves_are_equally_likely():
    n = 4000
    masks = np.asarray(C.sample_masks(jax.random.split(jax.random.key(1), n), 4, 4))
    halves = _halves_np(4, 4)
    counts = {name: int(np.sum(np.all(masks == h, axis=(1, 2, 3))))
              for name, h in halves.items()}
    assert sum(counts.values()) == n
    # Each count is Binomial(n, 1/4): sd = sqrt(n * 3 / 16) ~ 27; allow 5 sd.
    for name, count in counts.items():
        assert abs(count - n / 4) < 5 * np.sqrt(n * 3 / 16), (name, counts)


def test_a_mask_depends_on_its_key_alone():
    keys = jax.random.split(jax.random.key(2), 16)
    masks = np.asarray(C.sample_masks(keys, 6, 6))
    np.testing.assert_array_equal(np.asarray(C.sample_masks(keys, 6, 6)), masks)  # same key
    # However the batch is split (over devices, say): masks of keys[:k] are masks[:k],
    # of keys[k:] masks[k:], and one key alone gives its own mask.
    for k in (1, 5, 8):
        np.testing.assert_array_equal(np.asarray(C.sample_masks(keys[:k], 6, 6)), masks[:k])
        np.testing.assert_array_equal(np.asarray(C.sample_masks(keys[k:], 6, 6)), masks[k:])
    # Raw uint32 keys work as well.
    raw = jax.random.split(jax.random.PRNGKey(3), 4)
    assert C.sample_masks(raw, 4, 4).shape == (4, 4, 4, 1)


@pytest.mark.parametrize("height, width", [(7, 8), (8, 5), (0, 4), (4.0, 4)])
def test_odd_or_bad_sizes_raise_one_line(height, width):
    with pytest.raises(ValueError, match=r"complement masks need an even image (height|width)"
                       ) as err:
        C.sample_masks(jax.random.split(jax.random.key(0), 2), height, width)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------
# Pairs.


def test_pairs_are_the_masked_image_and_the_targets_complement():
    shape = (5, 6, 8, 3)
    images, targets = _images(0, shape), _images(1, shape)
    masks = np.asarray(C.sample_masks(jax.random.split(jax.random.key(4), 5), 6, 8))
    got_images, got_targets = C.pairs(jnp.asarray(images), jnp.asarray(targets),
                                      jnp.asarray(masks))
    assert got_images.shape == shape and got_targets.shape == shape
    assert got_images.dtype == jnp.float32 and got_targets.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got_images), masks * images)
    np.testing.assert_array_equal(np.asarray(got_targets), (1 - masks) * targets)
    # The two members cover disjoint halves.
    assert not np.any((np.asarray(got_images) != 0) & (np.asarray(got_targets) != 0))


def test_a_real_pair_recombines_to_its_target_and_a_perfect_canvas_is_real():
    shape = (4, 8, 8, 1)
    targets = jnp.asarray(_images(2, shape))
    masks = C.sample_masks(jax.random.split(jax.random.key(5), 4), 8, 8)
    half, rest = C.pairs(targets, targets, masks)
    np.testing.assert_allclose(np.asarray(half + rest), np.asarray(targets), rtol=0, atol=0)
    # A canvas equal to the target makes the fake pair the real pair, exactly.
    canvas = jnp.asarray(np.asarray(targets).copy())
    fake_half, fake_rest = C.pairs(canvas, targets, masks)
    np.testing.assert_array_equal(np.asarray(fake_half), np.asarray(half))
    np.testing.assert_array_equal(np.asarray(fake_rest), np.asarray(rest))


def test_pairs_broadcast_one_mask_over_an_episodes_steps():
    """Canvases [T + 1, B, H, W, C] with targets and masks per episode: the complement
    targets stay [B, H, W, C], and `score_canvases` scores every step against them."""
    t1, b, h, w, c = 3, 2, 8, 8, 1
    canvases = _images(3, (t1, b, h, w, c))
    targets = _images(4, (b, h, w, c))
    masks = np.asarray(C.sample_masks(jax.random.split(jax.random.key(6), b), h, w))
    masked, rest = C.pairs(jnp.asarray(canvases), jnp.asarray(targets), jnp.asarray(masks))
    assert masked.shape == (t1, b, h, w, c) and rest.shape == (b, h, w, c)
    for t in range(t1):
        np.testing.assert_array_equal(np.asarray(masked[t]), masks * canvases[t])
    np.testing.assert_array_equal(np.asarray(rest), (1 - masks) * targets)

    config = D.DiscriminatorConfig(channels=(4,), conditional=True, complement=True)
    disc = D.make_discriminator(config)
    params = D.init_variables(disc, jax.random.key(0), (h, w, c))["params"]
    apply_fn = D.critic_fn(disc)
    scores = D.score_canvases(apply_fn, params, masked, rest)
    assert scores.shape == (t1, b)
    for t in range(t1):
        want = apply_fn(params, masked[t], rest)
        np.testing.assert_allclose(np.asarray(scores[t]), np.asarray(want), rtol=1e-5,
                                   atol=1e-6)


def test_pairs_reject_mismatched_shapes():
    masks = jnp.ones((2, 4, 4, 1))
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"masks must be \[B, H, W, 1\]"):
        C.pairs(x, x, jnp.ones((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="images must be"):
        C.pairs(jnp.zeros((3, 4, 4, 3)), x, masks)
    with pytest.raises(ValueError, match="targets must be"):
        C.pairs(x, jnp.zeros((2, 4, 5, 3)), masks)
