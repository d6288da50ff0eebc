"""Sample quality during training, for unconditional digit runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from spiral_jax import datasets as data_lib
from spiral_jax import digit_classifier
from spiral_jax import metrics as metrics_lib
from spiral_jax.experiment import ConfigError, Experiment


def check_eval_config(config: Any) -> bool:
    """Whether the in-training Fréchet distance runs: `eval_every` > 0 on an
    unconditional digit run. Elsewhere it is skipped with a note, so that switching a
    config such as mnist5k to conditional or to another dataset needs no second
    override. ValueError for settings that cannot work."""
    if config.eval_every < 0:
        raise ConfigError(f"eval_every={config.eval_every} must be >= 0 (0 = no evaluation)")
    if not config.eval_every:
        return False
    if config.conditional or config.dataset not in digit_classifier.DATASETS:
        print(
            f"note: eval_every={config.eval_every} ignored: the in-training Fréchet "
            f"distance needs an unconditional run on "
            f"{', '.join(digit_classifier.DATASETS)}, not dataset={config.dataset!r} "
            f"with conditional={config.conditional}"
        )
        return False
    if config.eval_episodes < 2:
        raise ConfigError(
            f"eval_episodes={config.eval_episodes} must be >= 2 for a Fréchet distance"
        )
    return True


class FrechetToTrainingDigits:
    """The Fréchet distance between the agent's paintings and as many training digits,
    on the digit classifier's features: a sample-quality curve during training, which
    leaves the held-out split to `spiral_jax.evaluate`."""

    def __init__(self, exp: Experiment):
        config, env = exp.config, exp.env
        train = data_lib.load(
            config.dataset, "train", image_size=env.canvas_width, channels=env.channels,
            data_dir=config.data_dir or None, max_examples=config.eval_episodes,
        )
        self.classifier = digit_classifier.load_default()
        self.real_moments = metrics_lib.gaussian_moments(
            self.classifier.features(train.as_float())
        )
        self._sample = exp.sampler(config.eval_episodes)

    def paint(self, params: Any, key: Any) -> np.ndarray:
        return np.asarray(self._sample(params, key).final_canvas)

    def __call__(self, params: Any, key: Any) -> float:
        features = self.classifier.features(self.paint(params, key))
        return metrics_lib.frechet_distance_from_moments(
            *self.real_moments, *metrics_lib.gaussian_moments(features)
        )
