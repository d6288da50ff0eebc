"""Saving and restoring train states: checksums, damaged and non-finite checkpoints,
changed shapes, and checkpoints written by older versions."""

from __future__ import annotations

import dataclasses
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import small
from spiral_jax import checkpoints, experiment
from spiral_jax import datasets as data_lib
from spiral_jax.stops import TrainingFailure


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


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _overwrite(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes((b + 1) % 256 for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _run_with_checkpoints(exp, workdir, steps):
    """Saves a different state at each step, the way a run does; returns them."""
    mngr = checkpoints.manager(workdir, keep=5)
    states = {}
    for step in steps:
        state = exp.init_state(jax.random.PRNGKey(step)).replace(step=np.int32(step))
        states[step] = jax.device_get(state)
        checkpoints.save(mngr, step, state)
    checkpoints.finish(mngr)
    return states


@pytest.mark.parametrize("damage", [_truncate, _overwrite])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_used(
        dataset, tmp_path, capsys, damage):
    exp = _experiment(dataset, 0.9)
    states = _run_with_checkpoints(exp, tmp_path, [2, 4])
    damage(_largest_file(tmp_path / "checkpoints" / "4"))
    mngr = checkpoints.manager(tmp_path, keep=5)
    restored = checkpoints.restore_latest(mngr, exp.init_state(jax.random.PRNGKey(0)), tmp_path)
    _assert_same(states[2], restored)
    lines = [line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and "moved to" in lines[0] and "trying the previous one" in lines[0]
    # Moved aside, not deleted; the manager no longer lists it.
    assert (tmp_path / "corrupt_checkpoints" / "4").is_dir()
    assert mngr.all_steps() == [2]
    mngr.close()


def test_checksums_catch_what_a_restore_cannot(dataset, tmp_path):
    """Bytes changed in a way that still decodes: only the checksums can tell."""
    exp = _experiment(dataset, 0.0)
    states = _run_with_checkpoints(exp, tmp_path, [1])
    mngr = checkpoints.manager(tmp_path, keep=5)
    like = exp.init_state(jax.random.PRNGKey(0))
    state = checkpoints.restore_state(mngr, 1, like)
    assert checkpoints.verify(mngr, 1, state) is None
    tampered = state.replace(policy_params=jax.tree.map(lambda x: x.at[..., 0].add(1e-7)
                                                        if x.ndim else x, state.policy_params))
    problem = checkpoints.verify(mngr, 1, tampered)
    assert problem is not None and "does not match its checksums" in problem
    _assert_same(states[1], state)
    mngr.close()


def test_non_finite_states_are_never_saved(dataset, tmp_path):
    exp = _experiment(dataset, 0.0)
    state = exp.init_state(jax.random.PRNGKey(0))
    bad = state.replace(policy_params=jax.tree.map(lambda x: x * np.nan, state.policy_params))
    mngr = checkpoints.manager(tmp_path, keep=5)
    with pytest.raises(TrainingFailure, match="non-finite values"):
        checkpoints.save(mngr, 1, bad)
    checkpoints.finish(mngr)
    assert not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("change, message", [
    ({"agent.lstm_size": 16}, "with other shapes (policy_params/"),
    ({"learner.ema_decay": 0.9}, "only in this config: policy_ema/"),
])
def test_a_checkpoint_of_another_config_refuses_and_is_kept(dataset, tmp_path, change, message):
    _run_with_checkpoints(_experiment(dataset, 0.0), tmp_path, [3])
    config = small.get_config()
    config.learner.ema_decay = 0.0
    for field, value in change.items():
        section, name = field.split(".")
        config[section][name] = value
    other = experiment.build(config, dataset=dataset)
    mngr = checkpoints.manager(tmp_path, keep=5)
    with pytest.raises(experiment.ConfigError, match=re.escape(message)):
        checkpoints.restore_latest(mngr, other.init_state(jax.random.PRNGKey(0)), tmp_path)
    assert mngr.all_steps() == [3] and not (tmp_path / "corrupt_checkpoints").exists()
    mngr.close()


def test_keep_checkpoints_must_keep_one(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints=0 must be >= 1"):
        checkpoints.manager(tmp_path, keep=0)


def test_a_disk_without_room_refuses_before_writing(dataset, tmp_path, monkeypatch):
    exp = _experiment(dataset, 0.0)
    state = exp.init_state(jax.random.PRNGKey(0))
    needed = sum(x.nbytes for x in jax.tree.leaves(state))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: usage._replace(free=needed // 2))
    mngr = checkpoints.manager(tmp_path, keep=5)
    with pytest.raises(TrainingFailure, match=r"no room for checkpoint 1 in .*: it needs "
                                              r"about \d+ MB, \d+ MB are free"):
        checkpoints.save(mngr, 1, state)
    checkpoints.finish(mngr)
    assert not any((tmp_path / "checkpoints").iterdir())
