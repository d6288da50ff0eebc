"""Numbers that say whether a painting agent learned: distances and scores.

SPIRAL (Ganin et al., ICML 2018) shows samples and, for conditional agents, the L2
distance to the target. Here:

* **Conditional**: mean squared error to the target as a *fraction of a blank canvas's*
  (``relative_mse``): 1 = no better than painting nothing, 0 = exact. For scale, on
  held-out mnist5k digits (28x28 / the 32x32 canvas): the mean training digit scores
  0.60 / 0.56, the mean training digit of the target's class 0.47 / 0.43, the nearest
  training digit 0.29 / 0.23, the target blurred by 1 px 0.12 / 0.08 and by 1.5 px
  0.23 / 0.18 (``spiral_jax.baselines`` makes these reference images).
* **Unconditional**: the Fréchet distance (Heusel et al., NeurIPS 2017) between
  held-out real digits and samples on a digit classifier's penultimate features
  (``spiral_jax.digit_classifier``), and that classifier's confident-and-diverse score
  (``classifier_score``: the fraction it classifies with probability > 0.9, and the
  entropy of its mean class distribution, log 10 = 2.303 nats when all ten digits are
  equally common).

Everything is float64 numpy (deterministic, no compilation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray


def _as_2d(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name} has shape {a.shape}; expected [N >= 2, D >= 1]")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def as_images(name: str, x: Any) -> np.ndarray:
    """Images [N >= 1, H, W, C] as finite float64; ValueError naming `name` if not."""
    a = np.asarray(x, np.float64)
    if a.ndim != 4 or a.shape[0] < 1:
        raise ValueError(f"{name} has shape {a.shape}; expected images [N >= 1, H, W, C]")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


# ------------------------------------------------------------------------------------
# Fréchet distance.


def gaussian_moments(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (ddof 1) of features [N, D], float64."""
    f = _as_2d("features", features)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def sqrtm_psd(a: Any) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix.

    By eigendecomposition, a = V diag(w) V^T -> V diag(sqrt(w)) V^T; eigenvalues that
    rounding made slightly negative are taken as 0.
    """
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"matrix has shape {a.shape}; expected square [D, D]")
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: Any, sigma2: Any) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD sigma1, sigma2.

    sigma1 sigma2 is similar to S sigma2 S with S = sigma1^(1/2) (conjugate by S), which
    is symmetric PSD, so the trace is the sum of the square roots of its eigenvalues:
    no non-symmetric matrix square root (and no scipy) is needed, and the result is real.
    """
    s = sqrtm_psd(sigma1)
    m = s @ np.asarray(sigma2, np.float64) @ s
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance_from_moments(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"moments do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {s2.shape}; expected [D] and [D, D] with one D"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return float(max(value, 0.0))  # rounding can leave a tiny negative for equal inputs


def frechet_distance(features1: Any, features2: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N1, D], [N2, D].

    As FID (Heusel et al. 2017), on whatever features are given. The estimate is biased
    upwards for finite N (two samples of one distribution do not score 0), so compare
    figures computed with the same N.
    """
    f1, f2 = _as_2d("features1", features1), _as_2d("features2", features2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature widths differ: {f1.shape[1]} vs {f2.shape[1]}")
    return frechet_distance_from_moments(*gaussian_moments(f1), *gaussian_moments(f2))


# ------------------------------------------------------------------------------------
# Classifier score.


def _entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(np.sum(nz * np.log(1.0 / nz)))  # not -sum(...), which gives -0.0


def classifier_score(probabilities: Any, threshold: float = 0.9) -> dict[str, Any]:
    """The confident-and-diverse score of a classifier's outputs on samples.

    Args:
      probabilities: [N, K] class probabilities (rows sum to 1).
      threshold: confidence needed to count a sample as recognised.

    Returns:
      confident_fraction: fraction of samples whose largest probability > threshold
        (are the samples recognisable digits?);
      class_entropy: entropy in nats of the mean class distribution (do the samples
        cover all classes? log K when uniform, 0 when all one class). Unrecognisable
        inputs that leave the classifier unsure also raise it (a blank canvas scores
        near log K), so read it beside ``confident_fraction``;
      predicted_class_entropy: entropy of the histogram of predicted (argmax) classes,
        which does not reward unsure outputs (a blank canvas scores 0);
      class_entropy_max: log K, for scale;
      class_histogram: mean class distribution [K] as a list.
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"probabilities has shape {p.shape}; expected [N >= 1, K >= 2]")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probabilities rows must sum to 1")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1)")
    mean = p.mean(axis=0)
    hard = np.bincount(np.argmax(p, axis=1), minlength=p.shape[1]) / p.shape[0]
    return {
        "confident_fraction": float(np.mean(p.max(axis=1) > threshold)),
        "class_entropy": _entropy(mean),
        "predicted_class_entropy": _entropy(hard),
        "class_entropy_max": float(np.log(p.shape[1])),
        "class_histogram": [float(v) for v in mean],
    }


# ------------------------------------------------------------------------------------
# Reconstruction error.


def mse_per_image(canvases: Any, targets: Any) -> np.ndarray:
    """Mean squared error of each canvas to its target over pixels and channels, [N]."""
    c, t = as_images("canvases", canvases), as_images("targets", targets)
    if c.shape != t.shape:
        raise ValueError(f"canvases {c.shape} and targets {t.shape} differ in shape")
    return np.mean(np.square(c - t), axis=(1, 2, 3))


def relative_mse(canvases: Any, targets: Any, blank_canvas: Any = 1.0) -> float:
    """Squared error to the targets as a fraction of a blank canvas's:

        sum_i |canvas_i - target_i|^2 / sum_i |blank - target_i|^2

    (a ratio of means over the whole set, so nearly empty targets do not dominate).
    `blank_canvas`: white (1.0) for paintings; a scene's empty floor [H, W, C].
    """
    t = as_images("targets", targets)
    blank = float(np.mean(mse_per_image(np.broadcast_to(
        np.asarray(blank_canvas, t.dtype), t.shape), t)))
    if blank == 0.0:
        raise ValueError("every target is blank: the blank canvas's error is 0")
    return float(np.mean(mse_per_image(canvases, t))) / blank
