"""Restoring train states, including checkpoints written before a field existed."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import small
from spiral_jax import checkpoints, experiment
from spiral_jax import datasets as data_lib


@pytest.fixture(scope="module")
def dataset():
    return data_lib.load("mnist5k", "train", image_size=16, channels=1, max_examples=64)


def _experiment(dataset, ema_decay: float) -> experiment.Experiment:
    config = small.get_config()
    config.learner.ema_decay = ema_decay
    return experiment.build(config, dataset=dataset)


def _save(path, step, item):
    mngr = ocp.CheckpointManager(path.resolve())
    mngr.save(step, args=ocp.args.StandardSave(item))
    mngr.wait_until_finished()
    return mngr


def _assert_same(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_a_state_restores_as_saved(dataset, tmp_path, ema_decay):
    exp = _experiment(dataset, ema_decay)
    saved = exp.init_state(jax.random.PRNGKey(1)).replace(step=np.int32(5))
    if ema_decay:
        saved = saved.replace(policy_ema=exp.init_state(jax.random.PRNGKey(3)).policy_params)
    mngr = _save(tmp_path / "ckpt", 5, saved)
    restored = checkpoints.restore_state(mngr, 5, exp.init_state(jax.random.PRNGKey(2)))
    _assert_same(saved, restored)
    assert (restored.policy_ema is None) == (not ema_decay)


def test_a_checkpoint_from_before_the_average_restores_without_one(dataset, tmp_path):
    exp = _experiment(dataset, 0.0)
    saved = exp.init_state(jax.random.PRNGKey(1))
    # What older versions wrote: every field but policy_ema, stored by name.
    old = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)
           if f.name != "policy_ema"}
    mngr = _save(tmp_path / "old", 3, old)
    restored = checkpoints.restore_state(mngr, 3, exp.init_state(jax.random.PRNGKey(2)))
    assert isinstance(restored, experiment.TrainState) and restored.policy_ema is None
    _assert_same(saved, restored)
    # A run that keeps an average cannot make one up from such a checkpoint.
    like = _experiment(dataset, 0.9).init_state(jax.random.PRNGKey(2))
    with pytest.raises(ValueError):
        checkpoints.restore_state(mngr, 3, like)
