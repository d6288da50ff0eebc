"""Sample quality during training, for unconditional digit runs."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from spiral_jax import datasets as data_lib
from spiral_jax import digit_classifier
from spiral_jax import metrics as metrics_lib
from spiral_jax import train as train_lib

BEST_CHECKPOINTS = "best_checkpoints"
"""Workdir folder where `experiments.train` keeps the checkpoint with the lowest
in-training Fréchet distance."""


class FrechetToTrainingDigits:
    """The Fréchet distance between the agent's paintings and as many training digits,
    on the digit classifier's features: a sample-quality curve during training, which
    leaves the held-out split to `experiments.evaluate`."""

    def __init__(self, trainer: train_lib.Trainer, config: ml_collections.ConfigDict):
        env = trainer.env
        train = data_lib.load(
            config.dataset, "train", image_size=env.canvas_width, channels=env.channels,
            data_dir=config.data_dir or None, max_examples=config.eval_episodes,
        )
        self.classifier = digit_classifier.load_default()
        self.real_moments = metrics_lib.gaussian_moments(
            self.classifier.features(train.as_float())
        )
        self._sample = trainer.make_sampler(config.eval_episodes)

    def paint(self, params: Any, key: Any) -> np.ndarray:
        return np.asarray(self._sample(params, key).final_canvas)

    def __call__(self, params: Any, key: Any) -> float:
        features = self.classifier.features(self.paint(params, key))
        return metrics_lib.frechet_distance_from_moments(
            *self.real_moments, *metrics_lib.gaussian_moments(features)
        )
