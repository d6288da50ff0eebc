"""Numbers that say whether a painting agent learned: distances, scores and baselines.

SPIRAL (Ganin et al., ICML 2018) shows samples and, for conditional agents, the L2
distance to the target. Here:

* **Conditional**: mean squared error to the target as a *fraction of a blank canvas's*
  (``relative_mse``): 1 = no better than painting nothing, 0 = exact. DESIGN.md ("What
  the conditional figures mean") gives reference points: the mean digit 0.60, the mean
  digit of the right class 0.47, the nearest training digit 0.29 (``mean_image``,
  ``class_mean_images``, ``nearest_neighbours``, ``gaussian_blur`` reproduce them).
* **Unconditional**: the Fréchet distance (Heusel et al., NeurIPS 2017) between
  held-out real digits and samples on a digit classifier's penultimate features
  (``spiral_jax.digit_classifier``), and that classifier's confident-and-diverse score
  (``classifier_score``: the fraction it classifies with probability > 0.9, and the
  entropy of its mean class distribution, log 10 = 2.303 nats when all ten digits are
  equally common).
* **Baselines** measured in the same run: a blank canvas and a random policy
  (``make_random_policy``: uniform random actions through the environment).

Everything but the random policy is float64 numpy (deterministic, no compilation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax.envs.libmypaint import play

Array = np.ndarray


def _as_2d(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name} has shape {a.shape}; expected [N >= 2, D >= 1]")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _as_images(name: str, x: Any) -> np.ndarray:
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
    c, t = _as_images("canvases", canvases), _as_images("targets", targets)
    if c.shape != t.shape:
        raise ValueError(f"canvases {c.shape} and targets {t.shape} differ in shape")
    return np.mean(np.square(c - t), axis=(1, 2, 3))


def relative_mse(canvases: Any, targets: Any) -> float:
    """Squared error to the targets as a fraction of a blank (white) canvas's:

        sum_i |canvas_i - target_i|^2 / sum_i |1 - target_i|^2

    (a ratio of means over the whole set, so nearly empty targets do not dominate).
    """
    t = _as_images("targets", targets)
    blank = float(np.mean(mse_per_image(np.ones_like(t), t)))
    if blank == 0.0:
        raise ValueError("every target is blank: the blank canvas's error is 0")
    return float(np.mean(mse_per_image(canvases, t))) / blank


def mean_image(train_images: Any, n: int) -> np.ndarray:
    """The mean training image, repeated n times: a guess that ignores the target."""
    x = _as_images("train_images", train_images)
    return np.broadcast_to(x.mean(axis=0), (n,) + x.shape[1:]).copy()


def class_mean_images(train_images: Any, train_labels: Any, labels: Any) -> np.ndarray:
    """For each label, the mean training image of that class: knows only the class."""
    x = _as_images("train_images", train_images)
    tl, lab = np.asarray(train_labels), np.asarray(labels)
    if tl.shape != (x.shape[0],):
        raise ValueError(f"train_labels shape {tl.shape} must be ({x.shape[0]},)")
    missing = sorted(set(np.unique(lab).tolist()) - set(np.unique(tl).tolist()))
    if missing:
        raise ValueError(f"labels {missing} have no training images")
    means = {c: x[tl == c].mean(axis=0) for c in np.unique(lab).tolist()}
    return np.stack([means[c] for c in lab.tolist()])


def nearest_neighbours(train_images: Any, targets: Any, chunk: int = 256) -> np.ndarray:
    """For each target, the training image nearest in L2 (retrieval, not painting)."""
    x = _as_images("train_images", train_images)
    t = _as_images("targets", targets)
    if x.shape[1:] != t.shape[1:]:
        raise ValueError(f"train_images {x.shape[1:]} and targets {t.shape[1:]} differ")
    xf = x.reshape(x.shape[0], -1)
    x2 = np.sum(xf * xf, axis=1)
    tf = t.reshape(t.shape[0], -1)
    idx = np.empty(t.shape[0], np.int64)
    for s in range(0, t.shape[0], chunk):
        part = tf[s:s + chunk]
        # |t - x|^2 = |t|^2 + |x|^2 - 2 t.x; |t|^2 is the same for every x.
        idx[s:s + chunk] = np.argmin(x2[None] - 2.0 * part @ xf.T, axis=1)
    return x[idx]


def gaussian_blur(images: Any, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (kernel radius ceil(3 sigma), edges repeated), float64."""
    x = _as_images("images", images)
    if not sigma > 0:
        raise ValueError(f"sigma={sigma!r} must be > 0")
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = x
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(
            w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k)
        )
    return out


# ------------------------------------------------------------------------------------
# Random policy.


def random_actions(spec: dict[str, int], key: jax.Array, steps: int) -> dict[str, jax.Array]:
    """Uniform random actions, every part independent, int32 [steps] per part."""
    keys = jax.random.split(key, len(spec))
    return {
        name: jax.random.randint(k, (steps,), 0, n, jnp.int32)
        for k, (name, n) in zip(keys, spec.items(), strict=True)
    }


def make_random_policy(env: Any, num_episodes: int) -> Any:
    """``play(key) -> final canvases`` float32 [num_episodes, H, W, C] of whole episodes
    of uniform random actions through ``env`` (jitted once; call it with fresh keys).

    Each of the ``episode_length - 1`` steps draws every action part uniformly (so about
    half the steps paint and half move), as a policy whose logits are all equal would.
    A freshly initialised agent is *not* this: its logits are not flat. Canvases are
    the observed ones, 8-bit quantised as the agent sees them.
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes!r} must be a positive int")
    steps = env.episode_length - 1
    spec = dict(env.action_spec())

    def episode(k):
        k_reset, k_act = jax.random.split(k)
        return play(env, k_reset, random_actions(spec, k_act, steps))[-1]

    batched = jax.vmap(episode)
    return jax.jit(lambda key: batched(jax.random.split(key, num_episodes)))
