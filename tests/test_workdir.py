"""Workdir checks and the config comparison of a resumed run (`spiral_jax.workdir`)."""

from __future__ import annotations

import json

import pytest

from experiments.configs import small
from spiral_jax import workdir
from spiral_jax.experiment import ConfigError


def test_a_file_an_unwritable_place_and_unknown_schemes_are_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        workdir.check(file)
    # /proc refuses new entries even to root (a read-only place on any Linux machine).
    with pytest.raises(ConfigError, match="cannot be written"):
        workdir.check("/proc/spiral_jax_run")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        workdir.check("memory://bucket/run")


def test_a_bucket_without_its_client_is_refused_in_one_line(monkeypatch):
    from etils.epath import gpath

    def missing_client(self):
        raise ImportError("Please install gcsfs to access Google Storage")

    monkeypatch.setattr(gpath._GPath, "_backend", property(missing_client))
    with pytest.raises(ConfigError, match="gs://bucket/run: Please install gcsfs"):
        workdir.check("gs://bucket/run")


def test_a_writable_workdir_is_created_and_left_clean(tmp_path):
    path = workdir.check(tmp_path / "a" / "b")
    assert path.is_dir() and not list(path.iterdir())


def _first_run(tmp_path):
    config = small.get_config()
    workdir.check_config(workdir.check(tmp_path), config, resuming=False, allow_change=False)
    return config


def test_resuming_may_change_how_long_it_runs_and_what_it_writes(tmp_path, capsys):
    config = _first_run(tmp_path)
    config.num_train_steps = 500
    config.checkpoint_every = 7
    workdir.check_config(tmp_path, config, resuming=True, allow_change=False)
    out = capsys.readouterr().out
    assert "checkpoint_every: 10 -> 7" in out and "num_train_steps: 50 -> 500" in out
    assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 500


def test_resuming_with_other_settings_names_them_and_refuses_unless_allowed(tmp_path):
    config = _first_run(tmp_path)
    config.learner.learning_rate = 1e-3
    config.seed = 7
    with pytest.raises(ConfigError) as error:
        workdir.check_config(tmp_path, config, resuming=True, allow_change=False)
    message = str(error.value)
    assert "learner.learning_rate: 0.0001 -> 0.001" in message and "seed: 0 -> 7" in message
    assert "--allow_config_change" in message and "\n" not in message
    # config.json is kept as it was: the refused run wrote nothing.
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
    workdir.check_config(tmp_path, config, resuming=True, allow_change=True)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 7


def test_a_new_run_ignores_an_old_config_json(tmp_path):
    config = _first_run(tmp_path)
    config.seed = 3  # no checkpoint to resume: nothing to protect
    workdir.check_config(tmp_path, config, resuming=False, allow_change=False)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3


def test_differences_are_found_at_any_depth():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    new = {"a": 1, "b": {"c": [1, 3], "e": 2}}
    assert workdir.differences(old, new) == {
        "b.c": ([1, 2], [1, 3]), "b.d": ("x", None), "b.e": (None, 2)
    }
