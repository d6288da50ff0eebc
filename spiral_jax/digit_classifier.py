"""A small digit classifier whose features score paintings (Fréchet distance, confidence).

SPIRAL (Ganin et al., ICML 2018, Sec. 4.1) judges its MNIST agents by eye. To put a
number on unconditional samples we follow the recipe of the Fréchet Inception Distance
(Heusel et al., NeurIPS 2017) with a network that knows digits: a small CNN trained on
mnist5k's *train* split only (``experiments/train_digit_classifier.py``), whose
penultimate layer gives the features and whose softmax gives the confident-and-diverse
score (see ``spiral_jax.metrics``).

Inputs follow the canvas convention (``spiral_jax.datasets``): float [N, H, W, C] in
[0, 1], ink dark on white, C = 1 or 3. Colour is averaged to grey and any canvas size is
resized (bilinear, antialiased) to the classifier's 32x32 inside ``preprocess``, so the
same weights score 16x16, 32x32 and 64x64 canvases (best at 32x32, where it was trained).

The weights ship in ``spiral_jax/assets/digit_classifier_32.npz`` (flattened parameter
tree plus a JSON header that records how they were made).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spiral_jax import image_grid

IMAGE_SIZE = 32
"""Side of the square, grey images the classifier sees."""

NUM_CLASSES = 10
DATASETS = ("mnist5k", "mnist")
"""Datasets whose images the classifier can score."""
FEATURE_DIM = 64
"""Width of the penultimate layer: the features of the Fréchet distance. Few enough
that 1,000 samples estimate their covariance reasonably."""

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "digit_classifier_32.npz"
_META_KEY = "__meta_json__"
_BATCH = 500  # images per forward pass; bounds memory for any N


class DigitCNN(nn.Module):
    """Three conv stages (32x32 -> 4x4), a 64-unit ReLU layer (features), 10 logits.

    136k parameters (0.5 MB): small enough to ship in the package and to run on a CPU in
    milliseconds per batch.
    """

    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = FEATURE_DIM
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: float32 [N, 32, 32, 1], ink = 1 on a 0 ground (see ``preprocess``).

        Returns (logits [N, 10], features [N, feature_dim])."""
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}a")(x))
            if i:  # the first stage has one conv: 32x32 maps are the costly ones
                x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}b")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(x))
        logits = nn.Dense(self.num_classes, name="logits")(features)
        return logits, features


def preprocess(images: jax.Array, size: int = IMAGE_SIZE) -> jax.Array:
    """Canvas-convention images [N, H, W, C] -> the network's input [N, size, size, 1].

    Grey = mean over channels, resized to ``size`` (bilinear; antialiased when
    shrinking), then inverted so that ink is 1 and the ground 0.
    """
    x = jnp.asarray(images, jnp.float32)
    x = jnp.mean(x, axis=-1, keepdims=True)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 1), "linear", antialias=True)
    return 1.0 - jnp.clip(x, 0.0, 1.0)


def check_images(images: Any) -> np.ndarray:
    """Validates a batch of canvas-convention images; returns it as float32 numpy."""
    return image_grid.check_image_batch(images, square=True).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: DigitCNN, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return module.apply(params, preprocess(images))


@dataclasses.dataclass(frozen=True)
class DigitClassifier:
    """Trained weights plus the network: ``logits``, ``probabilities``, ``features``.

    Every method takes canvas-convention images (any square size, 1 or 3 channels) and
    returns float64 numpy arrays, computed in batches of 500.
    """

    module: DigitCNN
    params: Any
    meta: dict = dataclasses.field(default_factory=dict)

    def _run(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        x = check_images(images)
        logits, feats = [], []
        for start in range(0, x.shape[0], _BATCH):
            lo, fe = _apply(self.module, self.params, x[start:start + _BATCH])
            logits.append(np.asarray(lo, np.float64))
            feats.append(np.asarray(fe, np.float64))
        return np.concatenate(logits), np.concatenate(feats)

    def logits(self, images: Any) -> np.ndarray:
        """[N, 10] unnormalised class scores."""
        return self._run(images)[0]

    def probabilities(self, images: Any) -> np.ndarray:
        """[N, 10] softmax class probabilities."""
        lo = self.logits(images)
        lo = lo - lo.max(axis=1, keepdims=True)
        p = np.exp(lo)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, images: Any) -> np.ndarray:
        """[N] int64 most likely digit."""
        return np.argmax(self.logits(images), axis=1)

    def features(self, images: Any) -> np.ndarray:
        """[N, FEATURE_DIM] penultimate-layer activations (for the Fréchet distance)."""
        return self._run(images)[1]


def init_params(key: jax.Array, module: DigitCNN | None = None) -> Any:
    """Fresh parameters (lecun-normal kernels, zero biases, flax's defaults)."""
    module = DigitCNN() if module is None else module
    return module.init(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32))


def save(path: str | os.PathLike[str], params: Any, meta: dict | None = None) -> None:
    """Writes the parameter tree (flattened, '/'-joined keys) and a JSON header."""
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta or {}).encode(), np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load(path: str | os.PathLike[str] | None = None) -> DigitClassifier:
    """Loads shipped (default) or given weights, checking them against the network.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file's parameter names or shapes do not fit ``DigitCNN``.
    """
    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if not path.exists():
        raise FileNotFoundError(
            f"no classifier weights at {path}; make them with "
            "`python -m experiments.train_digit_classifier`"
        )
    with np.load(path) as z:
        meta = json.loads(bytes(z[_META_KEY]).decode()) if _META_KEY in z else {}
        flat = {k: z[k] for k in z.files if k != _META_KEY}
    module = DigitCNN()
    want = traverse_util.flatten_dict(
        jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), module)), sep="/"
    )
    got = {k: v.shape for k, v in flat.items()}
    expected = {k: tuple(v.shape) for k, v in want.items()}
    if got != expected:
        raise ValueError(
            f"classifier weights in {path} do not fit DigitCNN: got {got}, expected {expected}"
        )
    params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    return DigitClassifier(module, params, meta)


@functools.lru_cache(maxsize=1)
def load_default() -> DigitClassifier:
    """The shipped classifier, loaded once per process."""
    return load(None)
