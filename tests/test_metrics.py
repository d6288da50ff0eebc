"""Metrics and baselines against closed forms and brute force; the shipped digit classifier
on real digits."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from spiral_jax import baselines, datasets
from spiral_jax import digit_classifier as dc
from spiral_jax import metrics as m
from spiral_jax.envs.libmypaint import LibMyPaint


def _random_psd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ------------------------------------------------------------------------------------
# Matrix square roots and the Fréchet distance.


@pytest.mark.parametrize("d, rank", [(1, 1), (5, 5), (8, 3)])
def test_sqrtm_psd_squares_back_and_is_symmetric_psd(d, rank):
    a = _random_psd(np.random.default_rng(d), d, rank)
    s = m.sqrtm_psd(a)
    np.testing.assert_allclose(s @ s, a, atol=1e-9 * max(1.0, np.abs(a).max()))
    np.testing.assert_allclose(s, s.T, atol=1e-12)
    assert np.linalg.eigvalsh(s).min() > -1e-7


def test_trace_sqrt_product_commuting_matrices_closed_form():
    # Shared eigenvectors: (Q D1 Q^T)(Q D2 Q^T) = Q D1 D2 Q^T, trace sqrt = sum sqrt(d1 d2).
    rng = np.random.default_rng(0)
    q = _rotation(rng, 6)
    d1, d2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.0, 2.0, 6)
    s1, s2 = (q * d1) @ q.T, (q * d2) @ q.T
    assert m.trace_sqrt_product(s1, s2) == pytest.approx(np.sum(np.sqrt(d1 * d2)), rel=1e-10)


def test_trace_sqrt_product_matches_scipy_sqrtm_of_the_nonsymmetric_product():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    for d in (2, 7, 16):
        s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
        ref = np.trace(linalg.sqrtm(s1 @ s2)).real
        assert m.trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-7)


def test_frechet_from_moments_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    for m1, s1, m2, s2 in [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.0, 0.0, 1.5)]:
        got = m.frechet_distance_from_moments([m1], [[s1**2]], [m2], [[s2**2]])
        assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-12)


def test_frechet_from_moments_rotated_diagonal_closed_form():
    # Same rotation of two diagonal Gaussians: sum (sqrt(v1) - sqrt(v2))^2 + |mu1 - mu2|^2.
    rng = np.random.default_rng(2)
    d = 10
    q = _rotation(rng, d)
    v1, v2 = rng.uniform(0.0, 4.0, d), rng.uniform(0.0, 4.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2) + np.sum((mu1 - mu2) ** 2)
    got = m.frechet_distance_from_moments(mu1, (q * v1) @ q.T, mu2, (q * v2) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_frechet_distance_identical_sets_is_zero_and_shift_is_squared_distance():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    assert m.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    shift = rng.normal(size=12)
    # A shifted copy has the same covariance: only |shift|^2 remains.
    assert m.frechet_distance(f, f + shift) == pytest.approx(shift @ shift, rel=1e-8)


def test_frechet_distance_invariant_under_a_rotation_of_both_sets():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 5)), 2.0 * rng.normal(size=(150, 5)) + 1.0
    q = _rotation(rng, 5)
    assert m.frechet_distance(a @ q, b @ q) == pytest.approx(m.frechet_distance(a, b), rel=1e-9)


def test_frechet_distance_of_large_gaussian_samples_approaches_closed_form():
    rng = np.random.default_rng(5)
    d, n = 3, 200_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -2.0, 0.5])
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.diag([4.0, 0.5, 0.5])
    a = rng.multivariate_normal(mu1, s1, n)
    b = rng.multivariate_normal(mu2, s2, n)
    want = m.frechet_distance_from_moments(mu1, s1, mu2, s2)
    # Closed form: |mu|^2 = 5.25; (1-2)^2 + (sqrt2 - sqrt.5)^2 + 0 = 1.5.
    assert want == pytest.approx(5.25 + 1.0 + (math.sqrt(2) - math.sqrt(0.5)) ** 2, rel=1e-12)
    assert m.frechet_distance(a, b) == pytest.approx(want, rel=0.02)


def test_frechet_rejects_bad_inputs():
    with pytest.raises(ValueError, match="feature widths differ"):
        m.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"expected \[N >= 2, D >= 1\]"):
        m.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        m.frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="moments do not match"):
        m.frechet_distance_from_moments(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------
# Classifier score.


def test_classifier_score_extremes():
    k = 10
    confident_all = np.eye(k)[np.arange(50) % k]  # one-hot, every class equally often
    s = m.classifier_score(confident_all)
    assert s["confident_fraction"] == 1.0
    assert s["class_entropy"] == pytest.approx(math.log(k))
    assert s["predicted_class_entropy"] == pytest.approx(math.log(k))
    one_class = np.eye(k)[np.zeros(20, int)]
    s = m.classifier_score(one_class)
    assert s["class_entropy"] == pytest.approx(0.0) and s["predicted_class_entropy"] == 0.0
    unsure = np.full((20, k), 1.0 / k)
    s = m.classifier_score(unsure)
    assert s["confident_fraction"] == 0.0
    assert s["class_entropy"] == pytest.approx(math.log(k))  # the mean is uniform ...
    assert s["predicted_class_entropy"] == 0.0  # ... but every argmax is class 0


def test_classifier_score_matches_loops():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(64, 10)) * 4
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    s = m.classifier_score(p, threshold=0.8)
    assert s["confident_fraction"] == sum(max(row) > 0.8 for row in p) / 64
    mean = [sum(p[i, c] for i in range(64)) / 64 for c in range(10)]
    assert s["class_entropy"] == pytest.approx(-sum(q * math.log(q) for q in mean), rel=1e-12)
    np.testing.assert_allclose(s["class_histogram"], mean, rtol=1e-12)
    counts = [sum(int(np.argmax(row)) == c for row in p) / 64 for c in range(10)]
    ref = -sum(q * math.log(q) for q in counts if q > 0)
    assert s["predicted_class_entropy"] == pytest.approx(ref, rel=1e-12)


def test_classifier_score_rejects_bad_inputs():
    with pytest.raises(ValueError, match="sum to 1"):
        m.classifier_score(np.ones((3, 10)))
    with pytest.raises(ValueError, match="threshold"):
        m.classifier_score(np.eye(10), threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        m.classifier_score(np.ones(10) / 10)


# ------------------------------------------------------------------------------------
# Reconstruction error and its reference points.


def test_relative_mse_blank_is_one_target_is_zero_and_matches_loop():
    rng = np.random.default_rng(7)
    t = rng.uniform(size=(5, 4, 4, 1))
    c = rng.uniform(size=(5, 4, 4, 1))
    assert m.relative_mse(np.ones_like(t), t) == pytest.approx(1.0)
    assert m.relative_mse(t, t) == 0.0
    num = sum((c[i] - t[i]).ravel() @ (c[i] - t[i]).ravel() for i in range(5))
    den = sum((1 - t[i]).ravel() @ (1 - t[i]).ravel() for i in range(5))
    assert m.relative_mse(c, t) == pytest.approx(num / den, rel=1e-12)
    np.testing.assert_allclose(
        m.mse_per_image(c, t), [np.mean((c[i] - t[i]) ** 2) for i in range(5)], rtol=1e-12
    )
    with pytest.raises(ValueError, match="blank"):
        m.relative_mse(t, np.ones_like(t))
    with pytest.raises(ValueError, match="differ in shape"):
        m.mse_per_image(c[:2], t)


def test_nearest_neighbours_and_class_means_match_brute_force():
    rng = np.random.default_rng(8)
    train = rng.uniform(size=(40, 5, 5, 1))
    labels = rng.integers(0, 3, 40)
    targets = rng.uniform(size=(7, 5, 5, 1))
    nn = baselines.nearest_neighbours(train, targets, chunk=3)
    for i in range(7):
        j = min(range(40), key=lambda j: np.sum((train[j] - targets[i]) ** 2))
        np.testing.assert_array_equal(nn[i], train[j])
    want_labels = np.array([2, 0, 1, 1])
    means = baselines.class_mean_images(train, labels, want_labels)
    for i, c in enumerate(want_labels):
        np.testing.assert_allclose(means[i], train[labels == c].mean(0), rtol=1e-12)
    np.testing.assert_allclose(baselines.mean_image(train, 3)[2], train.mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match=r"labels \[5\] have no training images"):
        baselines.class_mean_images(train, labels, [5])


def test_gaussian_blur_matches_scipy_and_keeps_constants():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(9)
    x = rng.uniform(size=(2, 12, 12, 1))
    for sigma in (1.0, 1.5):
        # scipy's radius is int(truncate * sigma + 0.5) = ceil(3 sigma) for these sigmas.
        ref = ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="nearest", truncate=3.0)
        np.testing.assert_allclose(baselines.gaussian_blur(x, sigma), ref, atol=1e-12)
    np.testing.assert_allclose(baselines.gaussian_blur(np.full((1, 6, 6, 1), 0.3), 2.0), 0.3)


def test_reference_images_score_the_documented_figures_at_28():
    # The reference points that spiral_jax.baselines documents for held-out mnist5k at
    # 28x28: mean digit 0.60, class mean 0.47, nearest training digit 0.29, blurred 0.12.
    train = datasets.load("mnist5k", "train", image_size=28, channels=1)
    test = datasets.load("mnist5k", "test", image_size=28, channels=1)
    x, t = train.as_float(), test.as_float()
    assert m.relative_mse(baselines.mean_image(x, len(t)), t) == pytest.approx(0.60, abs=0.005)
    means = baselines.class_mean_images(x, train.labels, test.labels)
    assert m.relative_mse(means, t) == pytest.approx(0.47, abs=0.005)
    assert m.relative_mse(baselines.nearest_neighbours(x, t), t) == pytest.approx(0.29, abs=0.005)
    assert m.relative_mse(baselines.gaussian_blur(t, 1.0), t) == pytest.approx(0.12, abs=0.005)


# ------------------------------------------------------------------------------------
# Random policy.


def test_random_actions_are_uniform_over_every_part():
    spec = {"control": 16, "end": 16, "flag": 2, "size": 3}
    acts = baselines.random_actions(spec, jax.random.PRNGKey(0), 48_000)
    for name, n in spec.items():
        counts = np.bincount(np.asarray(acts[name]), minlength=n)
        assert counts.size == n  # nothing out of range
        expected = 48_000 / n
        # Chi-square with n - 1 dof: far below the 1e-6 tail for these n.
        chi2 = np.sum((counts - expected) ** 2 / expected)
        assert chi2 < 3 * n + 30, (name, counts)
    # Parts are drawn independently: flag and size are uncorrelated.
    corr = np.corrcoef(np.asarray(acts["flag"]), np.asarray(acts["size"]))[0, 1]
    assert abs(corr) < 0.02


def test_random_policy_paints_through_the_environment():
    env = LibMyPaint(episode_length=5, canvas_width=8, grid_width=4, brush_sizes=(2,),
                     use_color=False, use_pressure=False, brush_jitter=True, dab_budget=8)
    play = baselines.make_random_policy(env, 64)
    a = np.asarray(play(jax.random.PRNGKey(0)))
    assert a.shape == (64, 8, 8, 1)
    np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-3)  # observed: 8-bit
    blank = np.all(a == 1.0, axis=(1, 2, 3))
    # 4 steps, each painting with probability 1/2: P(no paint step) = 1/16.
    assert 0 < blank.sum() < 16
    np.testing.assert_array_equal(a, np.asarray(play(jax.random.PRNGKey(0))))
    assert not np.array_equal(a, np.asarray(play(jax.random.PRNGKey(1))))
    with pytest.raises(ValueError, match="num_episodes"):
        baselines.make_random_policy(env, 0)


# ------------------------------------------------------------------------------------
# The shipped digit classifier.


@pytest.fixture(scope="module")
def classifier() -> dc.DigitClassifier:
    return dc.load()


def test_shipped_classifier_is_small_and_records_how_it_was_made(classifier):
    assert dc.DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    assert "experiments.train_digit_classifier" in classifier.meta["trained_by"]
    assert "train split" in classifier.meta["data"]


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shipped_classifier_reads_held_out_digits(classifier, size):
    test = datasets.load("mnist5k", "test", image_size=size, channels=1, max_examples=100)
    accuracy = np.mean(classifier.predict(test.as_float()) == test.labels)
    assert accuracy >= 0.9, accuracy


def test_classifier_outputs_are_consistent(classifier):
    test = datasets.load("mnist5k", "test", image_size=32, channels=1, max_examples=40)
    x = test.as_float()
    p = classifier.probabilities(x)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(np.argmax(p, 1), classifier.predict(x))
    f = classifier.features(x)
    assert f.shape == (40, dc.FEATURE_DIM) and f.dtype == np.float64 and np.all(f >= 0)
    # Batch independence, and colour canvases read as their grey mean.
    np.testing.assert_allclose(classifier.features(x[7:9]), f[7:9], rtol=1e-5, atol=1e-5)
    rgb = np.repeat(x, 3, axis=-1)
    np.testing.assert_allclose(classifier.features(rgb), f, rtol=1e-5, atol=1e-5)
    # The logits layer on top of the features gives the logits.
    w = np.asarray(classifier.params["params"]["logits"]["kernel"], np.float64)
    b = np.asarray(classifier.params["params"]["logits"]["bias"], np.float64)
    np.testing.assert_allclose(f @ w + b, classifier.logits(x), rtol=1e-4, atol=1e-4)


def test_classifier_rejects_bad_images_and_files(classifier, tmp_path):
    with pytest.raises(ValueError, match="must be"):
        classifier.features(np.ones((2, 8, 6, 1), np.float32))
    with pytest.raises(ValueError, match="floating"):
        classifier.features(np.ones((2, 8, 8, 1), np.uint8))
    bad = tmp_path / "bad.npz"
    dc.save(bad, {"params": {"logits": {"kernel": np.zeros((3, 3))}}})
    with pytest.raises(ValueError, match="do not fit DigitCNN"):
        dc.load(bad)
    with pytest.raises(FileNotFoundError, match="train_digit_classifier"):
        dc.load(tmp_path / "missing.npz")


def test_save_load_round_trip(tmp_path):
    # Random values in the network's shapes (cheaper than running flax's init).
    shapes = jax.eval_shape(lambda: dc.init_params(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    dc.save(tmp_path / "w.npz", params, {"note": "x"})
    loaded = dc.load(tmp_path / "w.npz")
    assert loaded.meta == {"note": "x"}
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    got = {jax.tree_util.keystr(k): v
           for k, v in jax.tree_util.tree_leaves_with_path(loaded.params)}
    assert sorted(want) == sorted(got) and len(want) == 14
    for k in want:
        np.testing.assert_array_equal(np.asarray(want[k]), np.asarray(got[k]))
