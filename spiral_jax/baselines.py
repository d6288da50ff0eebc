"""Painters to compare an agent against, measured in the same evaluation.

* **Baselines**: a blank canvas, and a random policy (``make_random_policy``: uniform
  random actions through the environment), which say what painting nothing and
  painting without looking score.
* **References** for conditional runs (``references``): images that are not painted
  but bound what a painting of the target can score. As a fraction of a blank canvas's
  mean squared error to held-out mnist5k targets (28x28 / the 32x32 canvas): the mean
  training digit 0.60 / 0.56 (``mean_image``), the mean training digit of the target's
  class 0.47 / 0.43 (``class_mean_images``), the nearest training digit 0.29 / 0.23
  (``nearest_neighbours``), the target blurred by 1 px 0.12 / 0.08 and by 1.5 px
  0.23 / 0.18 (``gaussian_blur``).
* For unconditional runs, ``real_train_images``: as many real training images as
  there are paintings, the Fréchet distance that N real digits reach.

Everything but the random policy is float64 numpy (deterministic, no compilation).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax import xla_cpu
from spiral_jax.datasets import ImageDataset
from spiral_jax.environments import final_canvas
from spiral_jax.metrics import as_images

# The blurred-target references' Gaussian widths, in pixels of a 28x28 digit (scaled to
# the canvas, so that every canvas size blurs a digit alike).
BLUR_SIGMAS_28 = (1.0, 1.5)


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
    half the steps paint and half move; in a scene a third each add, skip and modify),
    as a policy whose logits are all equal would.
    A freshly initialised agent is *not* this: its logits are not flat. Canvases are
    the observed ones, 8-bit quantised as the agent sees them.
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes!r} must be a positive int")
    steps = env.episode_length - 1
    spec = dict(env.action_spec())

    def episode(k):
        k_reset, k_act = jax.random.split(k)
        return final_canvas(env, k_reset, random_actions(spec, k_act, steps))

    batched = jax.vmap(episode)
    return xla_cpu.jit(lambda key: batched(jax.random.split(key, num_episodes)))


def paint_random(env: Any, key: jax.Array, num_episodes: int, batch: int) -> np.ndarray:
    """Final canvases of N episodes of uniform random actions, `batch` at a time (the
    i-th batch with `fold_in(key, i)`)."""
    batch = min(batch, num_episodes)
    play_batch = make_random_policy(env, batch)
    out = [np.asarray(play_batch(jax.random.fold_in(key, i)))
           for i in range(math.ceil(num_episodes / batch))]
    return np.concatenate(out)[:num_episodes]


# ------------------------------------------------------------------------------------
# Reference images.


def mean_image(train_images: Any, n: int) -> np.ndarray:
    """The mean training image, repeated n times: a guess that ignores the target."""
    x = as_images("train_images", train_images)
    return np.broadcast_to(x.mean(axis=0), (n,) + x.shape[1:]).copy()


def class_mean_images(train_images: Any, train_labels: Any, labels: Any) -> np.ndarray:
    """For each label, the mean training image of that class: knows only the class."""
    x = as_images("train_images", train_images)
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
    x = as_images("train_images", train_images)
    t = as_images("targets", targets)
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
    x = as_images("images", images)
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


def references(train: ImageDataset, targets: np.ndarray,
               labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """The conditional references for `targets` [N, H, W, C] (float, square), by name:
    the mean training image, the nearest training image, the class mean (when every
    target's label has training images) and the target blurred by `BLUR_SIGMAS_28`."""
    train_x = train.as_float()
    out = {
        "mean_train_image": mean_image(train_x, len(targets)),
        "nearest_train_image": nearest_neighbours(train_x, targets),
    }
    # Class means need every held-out class among the training classes (not so for
    # Omniglot, whose held-out alphabets are new).
    if labels is not None and set(labels.tolist()) <= set(train.labels.tolist()):
        out["class_mean_train_image"] = class_mean_images(train_x, train.labels, labels)
    size = targets.shape[1]
    for s in BLUR_SIGMAS_28:
        out[f"target_blurred_{s}px_at_28"] = gaussian_blur(targets, s * size / 28)
    return out


def real_train_images(train: ImageDataset, key: jax.Array, n: int) -> dict[str, np.ndarray]:
    """min(n, all) training images drawn without replacement (kept in dataset order),
    under the name "real_train_images"."""
    count = min(n, len(train.images))
    pick = np.sort(np.asarray(
        jax.random.choice(key, len(train.images), (count,), replace=False)))
    return {"real_train_images": train.as_float()[pick]}
