"""The in-training Fréchet distance to training digits, and when it runs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments.configs import small
from spiral_jax import datasets as data_lib
from spiral_jax import digit_classifier, experiment
from spiral_jax import metrics as metrics_lib
from spiral_jax.sample_quality import FrechetToTrainingDigits, check_eval_config


def test_frechet_to_training_digits_is_zero_for_the_training_digits():
    config = small.get_config()
    config.eval_episodes = 16
    dataset = data_lib.load("mnist5k", "train", image_size=16, channels=1, max_examples=256)
    exp = experiment.build(config, dataset=dataset)
    frechet = FrechetToTrainingDigits(exp)
    train_digits = data_lib.load("mnist5k", "train", image_size=16, channels=1,
                                 max_examples=16).as_float()
    blank = np.ones_like(train_digits)
    classifier = digit_classifier.load_default()
    # The real side is the first eval_episodes training digits: painting exactly those
    # gives 0, and any painting gives the two-sample distance computed from scratch.
    frechet.paint = lambda params, key: train_digits
    assert abs(frechet(None, None)) < 1e-3
    frechet.paint = lambda params, key: blank
    expected = metrics_lib.frechet_distance(
        classifier.features(train_digits), classifier.features(blank)
    )
    assert frechet(None, None) == pytest.approx(expected, rel=1e-6) and expected > 10.0
    # The agent's own paintings: one per episode, on the canvas.
    state = exp.init_state(jax.random.PRNGKey(0))
    del frechet.paint
    canvases = frechet.paint(state.policy_params, jax.random.PRNGKey(1))
    assert canvases.shape == (16, 16, 16, 1)
    assert np.isfinite(frechet(state.policy_params, jax.random.PRNGKey(1)))


def test_it_runs_only_on_unconditional_digit_runs(capsys):
    config = small.get_config()
    assert not check_eval_config(config)  # eval_every = 0
    config.eval_every = 5
    assert check_eval_config(config)
    config.conditional = True
    assert not check_eval_config(config)
    assert "eval_every=5 ignored" in capsys.readouterr().out
    config.conditional = False
    config.eval_episodes = 1
    with pytest.raises(experiment.ConfigError, match="eval_episodes=1 must be >= 2"):
        check_eval_config(config)
