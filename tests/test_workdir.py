"""Workdir checks and the config comparison of a resumed run (`spiral_jax.workdir`)."""

from __future__ import annotations

import importlib
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


def test_differences_are_found_at_any_depth_and_new_fields_are_not_changes():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    new = {"a": 1, "b": {"c": [1, 3], "e": 2}}  # e: added by a newer version
    assert workdir.differences(old, new) == {"b.c": ([1, 2], [1, 3])}


@pytest.fixture
def fake_bucket(monkeypatch, tmp_path):
    """gs:// backed by fsspec's in-memory filesystem: the path layer is exercised end to
    end and nothing touches the network. The test runs in an empty directory, to show
    that nothing lands on local disk (pathlib would make `./gs:/bucket/...`)."""
    registry = importlib.import_module("fsspec.registry")
    from etils.epath import backend
    from fsspec.implementations.memory import MemoryFileSystem

    class Bucket(MemoryFileSystem):
        store: dict = {}  # this bucket's own store, not the global memory:// one
        pseudo_dirs = [""]

    monkeypatch.setitem(registry._registry, "gcs", Bucket)
    backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)
    yield Bucket
    backend.fsspec_backend._get_filesystem.cache_clear()
    assert not list(tmp_path.iterdir())


def test_a_bucket_workdir_holds_the_config_metrics_pictures_and_tensorboard(fake_bucket):
    import io

    import numpy as np
    from PIL import Image

    from spiral_jax.run_log import RunLog

    path = workdir.check("gs://bucket/run")
    assert str(path) == "gs://bucket/run"
    workdir.check_config(path, small.get_config(), resuming=False, allow_change=False)
    log = RunLog(path, 0, frames_per_step=40, is_chief=True)
    log.scalars(1, {"episode_return": 0.5})
    grid = np.full((8, 8, 3), 200, np.uint8)
    log.image("samples", grid, 1, "step_0000001.png")
    log.close()

    assert json.loads((path / "config.json").read_text())["batch_size"] == 8
    record = json.loads((path / "metrics.jsonl").read_text())
    assert record["step"] == 1 and record["episode_return"] == 0.5
    png = Image.open(io.BytesIO((path / "samples" / "step_0000001.png").read_bytes()))
    np.testing.assert_array_equal(np.asarray(png), grid)
    (events,) = list((path / "tensorboard").iterdir())
    data = events.read_bytes()
    assert events.name.startswith("events.out.tfevents") and b"train/episode_return" in data
