"""`train_and_evaluate`, the whole run in-process: outputs, resume, stop conditions;
and the `experiments.train` command line end to end (slow)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import small
from spiral_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
    config = small.get_config()
    config.max_examples = 256
    for k, v in overrides.items():
        config[k] = v
    return config


def _records(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_steps(folder: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def test_a_run_writes_its_outputs_resumes_and_stops_on_time(tmp_path, capsys):
    config = _config(num_train_steps=4, checkpoint_every=2, sample_every=2, log_every=1,
                     eval_every=2, eval_episodes=16)
    state = train.train_and_evaluate(config, tmp_path)
    assert int(state.step) == 4
    assert _checkpoint_steps(tmp_path / "checkpoints") == [2, 4]
    assert (tmp_path / "samples" / "step_0000004.png").exists()
    assert (tmp_path / "samples" / "real.png").exists()
    assert any((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 8
    # The best in-training Fréchet distance's checkpoint is kept, and only it.
    first = _records(tmp_path)
    distances = {r["step"]: r["frechet_train"] for r in first if "frechet_train" in r}
    assert sorted(distances) == [2, 4]
    assert all(np.isfinite(d) and d > 0 for d in distances.values())
    assert {r["step"] for r in first if "frechet_train_online" in r} == {2, 4}
    assert _checkpoint_steps(tmp_path / "best_checkpoints") == [min(distances, key=distances.get)]

    # The same call again resumes from step 4 and continues to 6.
    config = _config(num_train_steps=6, checkpoint_every=2, sample_every=100, log_every=1)
    state = train.train_and_evaluate(config, tmp_path)
    assert int(state.step) == 6 and "resumed from step 4" in capsys.readouterr().out
    assert 6 in _checkpoint_steps(tmp_path / "checkpoints")
    # Every logged step is in metrics.jsonl; a resumed run's minutes carry on.
    records = _records(tmp_path)
    train_records = [r for r in records if "frechet_train" not in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    minutes = [r["minutes"] for r in records]
    assert np.all(np.diff(minutes) >= 0) and minutes[0] > 0
    assert {"episode_return", "frames", "frames_per_second", "d_loss"} <= set(records[-1])
    assert records[-1]["frames"] == 6 * 8 * 5  # steps x batch x decisions per episode

    # A time limit stops the run early and saves where it stopped.
    config = _config(num_train_steps=100)
    state = train.train_and_evaluate(config, tmp_path, max_minutes=1e-6)
    assert int(state.step) == 6
    assert "--max_minutes=1e-06 reached at step 6" in capsys.readouterr().out


def _train_cli(workdir, *extra, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *extra],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout,
    )


@pytest.mark.slow
def test_command_line_trains_and_resumes(tmp_path):
    args = ["--config=small", "--config.max_examples=256", "--config.checkpoint_every=2"]
    first = _train_cli(tmp_path, *args, "--config.num_train_steps=2")
    assert first.returncode == 0, first.stderr[-4000:]
    assert _checkpoint_steps(tmp_path / "checkpoints") == [2]
    second = _train_cli(tmp_path, *args, "--config.num_train_steps=4")
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from step 2" in second.stdout
    assert _checkpoint_steps(tmp_path / "checkpoints") == [2, 4]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=nosuch"], "unknown config 'nosuch'; available:"),
        (["--config=small", "--config.nosuch=1"], "nosuch"),
        (["--config=small", "--config.batch_size=many"], "batch_size"),
        (["--config=small", "--config.disc_learner.loss=hinge"], "hinge"),
        (["--config=small", "--config.eval_every=5", "--config.eval_episodes=1"],
         "eval_episodes=1 must be >= 2"),
    ],
)
def test_command_line_rejects_bad_configs(tmp_path, args, message):
    out = _train_cli(tmp_path, *args, timeout=300)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
