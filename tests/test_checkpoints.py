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
    # What older versions wrote: every field but policy_ema (and members, added later),
    # stored by name.
    old = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)
           if f.name not in ("policy_ema", "members")}
    mngr = _save(tmp_path / "old", 3, old)
    restored = checkpoints.restore_state(mngr, 3, exp.init_state(jax.random.PRNGKey(2)))
    assert isinstance(restored, experiment.TrainState) and restored.policy_ema is None
    _assert_same(saved, restored)
    # The version before populations: policy_ema kept, no members field.
    averaged = _experiment(dataset, 0.9)
    with_ema = averaged.init_state(jax.random.PRNGKey(1))
    mid = {f.name: getattr(with_ema, f.name) for f in dataclasses.fields(with_ema)
           if f.name != "members"}
    mid_mngr = _save(tmp_path / "mid", 4, mid)
    restored = checkpoints.restore_state(mid_mngr, 4, averaged.init_state(jax.random.PRNGKey(2)))
    assert restored.members is None and restored.policy_ema is not None
    _assert_same(with_ema, restored)
    # A run that keeps an average cannot make one up from such a checkpoint.
    like = _experiment(dataset, 0.9).init_state(jax.random.PRNGKey(2))
    with pytest.raises(ValueError):
        checkpoints.restore_state(mngr, 3, like)


def _largest_file(folder, pattern="*"):
    return max((p for p in folder.rglob(pattern) if p.is_file()), key=lambda p: p.stat().st_size)


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


def test_damaged_newest_checkpoints_are_moved_aside_and_the_previous_one_used(
        dataset, tmp_path, capsys):
    exp = _experiment(dataset, 0.9)
    states = _run_with_checkpoints(exp, tmp_path, [2, 4, 6])
    like = exp.init_state(jax.random.PRNGKey(0))
    # Truncated: it cannot be read. Bytes of the arrays' data overwritten in place: it
    # reads, but does not match its checksums (spiral_jax.checksums; test_checksums.py).
    for damage, newest, previous in ((_truncate, 6, 4), (_overwrite, 4, 2)):
        damage(_largest_file(tmp_path / "checkpoints" / str(newest), "ocdbt.process_0/d/*"))
        mngr = checkpoints.manager(tmp_path, keep=5)
        restored = checkpoints.restore_latest(mngr, like, tmp_path)
        _assert_same(states[previous], restored)
        lines = [line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line]
        assert len(lines) == 1 and f"checkpoints/{newest} " in lines[0]
        assert "moved to" in lines[0] and "trying the previous one" in lines[0]
        # Overwritten bytes are caught by whichever check they reach first: the chunk no
        # longer decodes, or it decodes to NaNs, or else to values the checksums reject.
        # Which one depends on where the bytes fall in the file orbax wrote.
        expected = (("cannot be read",) if damage is _truncate
                    else ("cannot be read", "does not match its checksums",
                          "holds non-finite values"))
        assert any(e in lines[0] for e in expected), lines[0]
        # Moved aside, not deleted; the manager no longer lists it.
        assert (tmp_path / "corrupt_checkpoints" / str(newest)).is_dir()
        assert newest not in mngr.all_steps()
        # One value moved by one ulp: only the checksums can tell.
        assert checkpoints.verify(mngr, previous, restored) is None
        w = restored.policy_params["params"]["baseline"]["kernel"]
        tampered = restored.replace(policy_params={"params": {
            **restored.policy_params["params"],
            "baseline": {**restored.policy_params["params"]["baseline"],
                         "kernel": w.at[0, 0].set(np.nextafter(w[0, 0], np.inf))}}})
        problem = checkpoints.verify(mngr, previous, tampered)
        assert problem == ("does not match its checksums "
                           "(policy_params/params/baseline/kernel)")
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
