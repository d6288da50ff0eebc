"""Pretrained agents (spiral_jax.pretrained): the slim export paints exactly as the
checkpoint it came from, damage and mismatches fail in one line, and the agents in
pretrained/ load and paint (the conditional one better than a blank canvas)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import small
from spiral_jax import checkpoints, datasets, experiment, metrics, paint, pretrained

STEP = 5
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    """A conditional `small` run (with a parameter average) at a checkpoint of random
    parameters whose average differs from the learner's, as spiral_jax.train writes it."""
    config = small.get_config()
    config.conditional = True
    config.reward.kind = "l2"
    config.learner.ema_decay = 0.9
    blank = datasets.ImageDataset("blank", "train", np.full((8, 16, 16, 1), 255, np.uint8),
                                  np.full(8, -1, np.int32), np.arange(8), None)
    exp = experiment.build(config, dataset=blank)
    state = exp.init_state(jax.random.PRNGKey(1))
    other = exp.init_state(jax.random.PRNGKey(2))
    state = state.replace(step=np.int32(STEP), policy_ema=other.policy_params)
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    mngr = checkpoints.manager(workdir, keep=2)
    checkpoints.save(mngr, STEP, state)
    mngr.wait_until_finished()
    mngr.close()
    return workdir


def _export(run_dir: pathlib.Path, out: pathlib.Path) -> dict:
    run = paint.load(*paint.resolve_source(None, str(run_dir)))
    return pretrained.export((run_dir / "config.json").read_text(), run.state.eval_params,
                             out, step=run.step, source=str(run_dir), made_with="a test",
                             averaged=run.state.policy_ema is not None)


@pytest.mark.slow
def test_an_exported_agent_paints_exactly_as_its_checkpoint(run_dir, tmp_path):
    info = _export(run_dir, tmp_path / "agent")
    assert info["step"] == STEP and info["params"].startswith("the parameter average")
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == [
        "config.json", "info.json", "params.msgpack"]
    assert json.loads((tmp_path / "agent" / "info.json").read_text()) == info
    assert pretrained.is_pretrained(tmp_path / "agent") and not pretrained.is_pretrained(run_dir)
    source = paint.resolve_source(None, str(tmp_path / "agent"))
    assert source == (tmp_path / "agent", None, pretrained.PARAMS)
    slim, full = paint.load(*source), paint.load(*paint.resolve_source(None, str(run_dir)))
    assert slim.step == full.step == STEP
    # It kept the average (eval_params), not the learner's parameters.
    for a, b in zip(jax.tree.leaves(slim.state.eval_params),
                    jax.tree.leaves(full.state.policy_ema), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    targets = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    for greedy in (True, False):
        got = paint.paint(slim, targets, 3, seed=4, greedy=greedy)
        want = paint.paint(full, targets, 3, seed=4, greedy=greedy)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.canvas, w.canvas)
            assert g.program.steps == w.program.steps
    # By default a conditional agent paints greedily.
    default = paint.paint(slim, targets, 3, seed=4, greedy=None)
    greedy = paint.paint(slim, targets, 3, seed=4, greedy=True)
    assert default[0].program.info["greedy"] is True
    np.testing.assert_array_equal(default[0].canvas, greedy[0].canvas)


@pytest.mark.slow
def test_damaged_or_mismatched_parameters_fail_in_one_line(run_dir, tmp_path):
    _export(run_dir, tmp_path / "agent")
    params = tmp_path / "agent" / "params.msgpack"
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 1
    params.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256") as err:
        paint.resolve_source(None, str(tmp_path / "agent"))  # before anything compiles
    assert "\n" not in str(err.value)
    out = subprocess.run(
        [sys.executable, "-m", "experiments.paint", f"--checkpoint={tmp_path / 'agent'}",
         "--target=docs/images/digit.png", f"--out={tmp_path / 'out'}"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, cwd=REPO,
        timeout=600)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {err.value}"]
    # Sound parameters under a config whose agent is wider.
    _export(run_dir, tmp_path / "agent")
    config = json.loads((tmp_path / "agent" / "config.json").read_text())
    config["agent"]["lstm_size"] *= 2
    (tmp_path / "agent" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"has shape .*, its config.json gives") as err:
        paint.load(*paint.resolve_source(None, str(tmp_path / "agent")))
    assert "\n" not in str(err.value)


def test_names_resolve_to_complete_folders(tmp_path):
    (tmp_path / "mnist5k").mkdir()
    for name in ("config.json", "params.msgpack"):
        (tmp_path / "mnist5k" / name).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"'mnist5k' is not in .* lacks info.json"):
        pretrained.folder("mnist5k", tmp_path)
    (tmp_path / "mnist5k" / "info.json").write_text("{}")
    assert pretrained.folder("mnist5k", tmp_path) == tmp_path / "mnist5k"
    assert set(pretrained.AGENTS) >= {"mnist5k", "mnist5k_conditional"}
    assert pretrained.PRETRAINED_DIR == REPO / "pretrained"


@pytest.mark.parametrize("name", sorted(pretrained.AGENTS))
def test_the_pretrained_agents_are_here_and_small(name):
    path = pretrained.folder(name)
    info = pretrained.read_info(path)
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 8e6, size
    assert info["params_bytes"] == (path / pretrained.PARAMS).stat().st_size
    assert info["made_with"] and info["step"] > 0
    config = json.loads((path / "config.json").read_text())
    assert config["conditional"] is name.endswith("conditional")


def test_the_conditional_agent_paints_held_out_digits_better_than_a_blank_canvas():
    run = paint.load(*paint.resolve_source("mnist5k_conditional", None))
    test = datasets.load("mnist5k", "test", image_size=run.exp.env.canvas_width, channels=1,
                         max_examples=32)
    targets = test.as_float()
    paintings = paint.paint(run, targets, len(targets), seed=0, greedy=True)
    canvases = np.stack([p.canvas for p in paintings])
    # As a fraction of a blank canvas's error: 1 paints nothing useful.
    assert metrics.relative_mse(canvases, targets) < 0.75
