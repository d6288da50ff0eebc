"""spiral_jax.evaluate: checkpoints written in-process (unconditional and conditional)
evaluated into pictures, a GIF and metrics; end to end (slow), a tiny run trained
in-process and evaluated, and the `experiments.evaluate` command line."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.configs import small
from spiral_jax import checkpoints, experiment, pictures, train
from spiral_jax import evaluate as ev

REPO = pathlib.Path(__file__).resolve().parents[1]
EPISODE_LENGTH = small.get_config().env.episode_length  # T + 1 canvases per episode
# Arguments of the unconditional evaluation, in-process and on the command line.
UNCONDITIONAL = dict(num_episodes=12, batch_size=8, gif_episodes=3, grid_samples=6)


def _finite_numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _finite_numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _finite_numbers(v)]
    return [tree] if isinstance(tree, float) else []


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> pathlib.Path:
    """Two train steps of the `small` config, with an in-training Fréchet distance
    after each. (Settings that change no compiled program match tests/test_train.py's
    run, so that the session's compilation cache serves both.)"""
    workdir = tmp_path_factory.mktemp("run")
    config = small.get_config()
    config.num_train_steps = 2
    config.checkpoint_every = 2
    config.sample_every = 100
    config.max_examples = 256
    config.eval_every = 1
    config.eval_episodes = 16
    train.train_and_evaluate(config, workdir)
    return workdir


def _check_unconditional_table(table: str) -> None:
    assert "Fréchet" in table and "baseline: random_policy" in table
    assert "agent (greedy actions)" in table
    # `small` keeps a parameter average (as mnist5k does): the online parameters too.
    assert "agent, online params" in table and "agent, online, greedy" in table


def _check_unconditional_metrics(metrics: dict, eval_dir: pathlib.Path, step: int = 2) -> None:
    assert metrics["step"] == step and not metrics["conditional"]
    assert metrics["num_episodes"] == 12 and metrics["num_real"] == 12
    assert set(metrics["baselines"]) == {"blank_canvas", "random_policy"}
    assert set(metrics["references"]) == {"real_train_images"}
    numbers = _finite_numbers(metrics)
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert (eval_dir / "samples_greedy.png").exists()
    assert metrics["agent_params"] == "moving average (decay 0.998)"
    assert "agent_online" in metrics
    for row in [metrics["agent"], metrics["agent_greedy"], metrics["agent_online"],
                metrics["agent_online_greedy"], *metrics["baselines"].values()]:
        assert row["frechet_distance"] >= 0 and 0 <= row["confident_fraction"] <= 1
        assert 0 <= row["class_entropy"] <= math.log(10) + 1e-9
    assert metrics["baselines"]["blank_canvas"]["ink"] == 0.0
    # Real training digits are far closer to held-out digits than a blank canvas is.
    real_fd = metrics["references"]["real_train_images"]["frechet_distance"]
    assert real_fd < metrics["baselines"]["blank_canvas"]["frechet_distance"]

    gif = Image.open(eval_dir / "painting.gif")
    assert gif.n_frames == EPISODE_LENGTH  # c_0 (blank) .. c_T
    assert gif.info["loop"] == 0
    samples = Image.open(eval_dir / "samples.png")
    assert samples.size == (8 * 18 + 2, 18 + 2)  # 6 paintings of 16 px in a row of 8


@pytest.mark.slow
def test_evaluates_an_unconditional_checkpoint(tmp_path):
    workdir = tmp_path / "uncond"
    config = small.get_config()  # keeps a parameter average, as mnist5k does
    config.max_examples = 256
    exp = experiment.build(config)
    state = exp.init_state(jax.random.PRNGKey(1)).replace(step=np.int32(5))
    # An average unlike the parameters, as after training.
    state = state.replace(policy_ema=exp.init_state(jax.random.PRNGKey(2)).policy_params)
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    _save(workdir, 5, state)
    metrics = ev.evaluate(workdir, **UNCONDITIONAL)
    _check_unconditional_metrics(metrics, workdir / "eval", step=5)
    assert json.loads((workdir / "eval" / "metrics.json").read_text()) == json.loads(
        json.dumps(metrics))
    _check_unconditional_table(ev.format_table(metrics))


@pytest.mark.slow
def test_evaluates_an_unconditional_run(trained_run):
    metrics = ev.evaluate(trained_run, **UNCONDITIONAL)
    eval_dir = trained_run / "eval"
    _check_unconditional_metrics(metrics, eval_dir)
    assert json.loads((eval_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    _check_unconditional_table(ev.format_table(metrics))


@pytest.mark.slow
def test_the_best_checkpoint_is_kept_and_evaluated(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    distances = {r["step"]: r["frechet_train"] for r in records if "frechet_train" in r}
    assert sorted(distances) == [1, 2]
    online = {r["step"] for r in records if "frechet_train_online" in r}
    assert online == {1, 2}
    best = min(distances, key=distances.get)
    kept = [p.name for p in (trained_run / "best_checkpoints").iterdir() if p.name.isdigit()]
    assert kept == [str(best)]
    workdir, step, folder = ev.resolve_run(None, f"{trained_run}/best_checkpoints/{best}")
    assert (workdir, step, folder) == (trained_run.resolve(), best, "best_checkpoints")
    ev.evaluate(workdir, step, out_dir=trained_run / "eval_best", num_episodes=8,
                batch_size=8, gif_episodes=2, grid_samples=4, checkpoints=folder)
    metrics = json.loads((trained_run / "eval_best" / "metrics.json").read_text())
    assert metrics["step"] == best and metrics["checkpoint"] == f"best_checkpoints/{best}"


def _conditional_run(workdir: pathlib.Path, step: int, ema_decay: float = 0.0):
    """A conditional `small` run's config.json and a checkpoint at `step`, written as
    spiral_jax.train writes them (no training: evaluate only needs the files)."""
    config = small.get_config()
    config.conditional = True
    config.reward.kind = "l2"
    config.max_examples = 64
    config.learner.ema_decay = ema_decay
    exp = experiment.build(config)
    state = exp.init_state(jax.random.PRNGKey(1)).replace(step=np.int32(step))
    if ema_decay:  # an average unlike the parameters, as after training
        state = state.replace(policy_ema=exp.init_state(jax.random.PRNGKey(2)).policy_params)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    _save(workdir, step, state)
    return exp, state


def _save(workdir: pathlib.Path, step: int, state: experiment.TrainState) -> None:
    mngr = checkpoints.manager(workdir, keep=5)
    checkpoints.save(mngr, step, state)
    mngr.wait_until_finished()
    mngr.close()


def test_evaluate_conditional_run_with_baselines_and_references(tmp_path):
    workdir = tmp_path / "cond"
    exp, saved = _conditional_run(workdir, step=7)
    # The restored state is the saved one (not a fresh initialisation).
    restored, step = ev.restore_state(exp, workdir, None)
    assert step == 7
    for a, b in zip(jax.tree.leaves(saved.policy_params),
                    jax.tree.leaves(restored.policy_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    out_dir = tmp_path / "out"
    workdir_, step_, folder = ev.resolve_run(None, str(workdir / "checkpoints" / "7"))
    assert (workdir_, step_, folder) == (workdir.resolve(), 7, "checkpoints")
    metrics = ev.evaluate(workdir_, step_, out_dir=out_dir, num_episodes=10, batch_size=4,
                          gif_episodes=2, grid_samples=4)
    assert metrics["conditional"] and metrics["step"] == 7 and metrics["num_episodes"] == 10
    assert metrics["baselines"]["blank_canvas"]["relative_mse"] == pytest.approx(1.0)
    assert set(metrics["references"]) == {
        "mean_train_image", "class_mean_train_image", "nearest_train_image",
        "target_blurred_1.0px_at_28", "target_blurred_1.5px_at_28",
    }
    assert (out_dir / "samples_greedy.png").exists()
    for name, row in [("agent", metrics["agent"]), ("greedy", metrics["agent_greedy"]),
                      *metrics["baselines"].items(),
                      *metrics["references"].items()]:
        assert math.isfinite(row["relative_mse"]) and row["relative_mse"] >= 0, name
        assert 0 <= row["recognised_as_target"] <= 1, name
    # Retrieval beats the class mean, which beats the overall mean (as on full mnist5k).
    ref = {k: v["relative_mse"] for k, v in metrics["references"].items()}
    assert ref["nearest_train_image"] < ref["class_mean_train_image"] < ref["mean_train_image"]
    assert json.loads((out_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    gif = Image.open(out_dir / "painting.gif")
    assert gif.n_frames == EPISODE_LENGTH
    # Targets above paintings: two rows of two 16 px canvases, enlarged 6x, plus the bar.
    assert gif.size == ((2 * 18 + 2) * 6, (2 * 18 + 2) * 6 + 6)
    samples = Image.open(out_dir / "samples.png")
    assert samples.size == (8 * 18 + 2, 18 + 2)  # 4 (target, painting) pairs in a row
    assert "MSE / blank" in ev.format_table(metrics)


@pytest.mark.slow
def test_a_run_with_a_policy_average_is_evaluated_with_it(tmp_path):
    workdir = tmp_path / "ema"
    exp, saved = _conditional_run(workdir, step=3, ema_decay=0.9)
    restored, _ = ev.restore_state(exp, workdir, None)
    for a, b in zip(jax.tree.leaves(saved.policy_ema), jax.tree.leaves(restored.eval_params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kwargs = dict(num_episodes=6, batch_size=4, gif_episodes=1, grid_samples=2)
    metrics = ev.evaluate(workdir, out_dir=tmp_path / "out", **kwargs)
    assert metrics["agent_params"] == "moving average (decay 0.9)"
    # The learner's own parameters are painted beside it, with the same key: an average
    # made of the parameters themselves must score exactly the same.
    assert metrics["agent_online"]["relative_mse"] != metrics["agent"]["relative_mse"]
    _save(workdir, 4, saved.replace(policy_ema=saved.policy_params))
    same = ev.evaluate(workdir, 4, out_dir=tmp_path / "out4", **kwargs)
    assert same["agent_online"] == same["agent"]
    assert same["agent_online_greedy"] == same["agent_greedy"]
    assert "online params" in ev.format_table(same)
    assert "moving average (decay 0.9)" in ev.format_table(same)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        ev.resolve_run(None, None)
    with pytest.raises(ValueError, match="no config.json"):
        ev.resolve_run(str(tmp_path), None)
    with pytest.raises(ValueError, match="checkpoints/<step>"):
        ev.resolve_run(None, str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        ev.resolve_run(None, str(tmp_path / "best_checkpoints" / "3"))
    with pytest.raises(ValueError, match="num_episodes=0"):
        ev.evaluate(tmp_path, num_episodes=0)
    with pytest.raises(ValueError, match="checkpoints='eval' must be one of"):
        ev.evaluate(tmp_path, checkpoints="eval")
    with pytest.raises(ValueError, match="does not exist"):
        ev.load_config(tmp_path)
    with pytest.raises(ValueError, match="pictures is empty"):
        pictures.save_gif(tmp_path / "x.gif", [])


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True,
                          text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_command_line_evaluates_a_run_and_rejects_bad_arguments(trained_run):
    out = _run("experiments.evaluate", f"--workdir={trained_run}",
               *(f"--{k}={v}" for k, v in UNCONDITIONAL.items()))
    assert out.returncode == 0, out.stderr[-4000:]
    _check_unconditional_table(out.stdout)
    eval_dir = trained_run / "eval"
    assert f"wrote {eval_dir / 'samples.png'}" in out.stdout
    _check_unconditional_metrics(json.loads((eval_dir / "metrics.json").read_text()), eval_dir)

    bad = _run("experiments.evaluate", f"--checkpoint={trained_run}")
    assert bad.returncode == 2 and bad.stdout == ""
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --checkpoint=") and "checkpoints/<step>" in last
