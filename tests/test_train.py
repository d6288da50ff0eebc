"""The training run (`spiral_jax.train`) and its step (`spiral_jax.train_step`).

`train_and_evaluate` in-process: outputs, resume, stop conditions; the jitted step:
every loss and reward trains, the average's update rule; slow: two devices equal one,
and the `experiments.train` command line end to end. (One file, so that the tests that
compile `small`'s train step share one compilation in one test process.)"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import small
from spiral_jax import datasets as data_lib
from spiral_jax import evaluate as evaluate_lib
from spiral_jax import experiment, rewards, train, train_step
from spiral_jax.stops import TrainingFailure
from tests import device_split

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
    """`small`, with one critic update per step: the loop does not depend on how many,
    and the step compiles faster (the same program as the average's test below)."""
    config = small.get_config()
    config.max_examples = 256
    config.disc_learner.updates_per_step = 1
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
    result = train.train_and_evaluate(config, tmp_path)
    assert int(result.state.step) == result.step == 4 and result.exit_code == 0
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
    result = train.train_and_evaluate(config, tmp_path)
    assert result.step == 6 and "resumed from step 4" in capsys.readouterr().out
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
    result = train.train_and_evaluate(config, tmp_path, max_minutes=1e-6)
    assert result.step == 6 and result.exit_code == 75
    assert "--max_minutes=1e-06 at step 6" in capsys.readouterr().out


@pytest.fixture(scope="module")
def dataset():
    return data_lib.load("mnist5k", "train", image_size=16, channels=1, max_examples=256)


def _run_steps(config, dataset, n):
    exp = experiment.build(config, dataset=dataset)
    state = exp.init_state(jax.random.PRNGKey(0))
    step = train_step.make_train_step(exp)
    history = []
    for i in range(n):
        state, metrics = step(state, jax.random.PRNGKey(i))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, history


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def _moved(a, b) -> bool:
    return any(not np.allclose(x, y)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# SPIRAL: WGAN-GP critic, D's score of the final canvas. SPIRAL++: spectral-norm GAN,
# per-step credit, discount 0.9, penalties. Conditional: the paper's L2 baseline, D
# still trained on pairs. The CPU recipes: pooled per-step L2, scaled, normalised
# entropy; standardised critic scores with 5 critic updates.
CASES = {
    "spiral": dict(loss="wgan_gp", reward="terminal_d"),
    "spiral++": dict(loss="gan", reward="per_step_d", discount=0.9, stroke=0.01, empty=0.1),
    "l2-conditional": dict(loss="wgan_gp", reward="l2", conditional=True, passes=2),
    "l2-per-step-bf16": dict(loss="gan", reward="l2_per_step", conditional=True,
                             dtype="bfloat16"),
    "conditional-recipe": dict(loss="wgan_gp", reward="l2_per_step", conditional=True,
                               pools=(1, 2, 4), scale=5.0, norm_entropy=True),
    "unconditional-recipe": dict(loss="wgan_gp", reward="terminal_d", standardize=True,
                                 d_updates=5, gp=10.0),
    # SPIRAL++'s conditional agents: a complement D's per-step reward.
    "spiral++-complement": dict(loss="gan", reward="per_step_d", discount=0.9,
                                conditional=True, complement=True),
}
# Each case compiles its own step: all are slow (the default suite trains `small`
# through the loop above and the average's test below).
FAST_CASES = ()


@pytest.mark.parametrize(
    "name", [n if n in FAST_CASES else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_every_loss_and_reward_trains_without_nans(dataset, name):
    o = CASES[name]
    config = small.get_config()
    config.disc_learner.loss = o["loss"]
    config.disc.spectral_norm = o["loss"] == "gan"
    config.reward.kind = o["reward"]
    config.reward.discount = o.get("discount", 1.0)
    config.reward.stroke_penalty = o.get("stroke", 0.0)
    config.reward.empty_penalty = o.get("empty", 0.0)
    config.conditional = o.get("conditional", False)
    config.disc.complement = o.get("complement", False)
    config.learner.passes = o.get("passes", 1)
    config.compute_dtype = o.get("dtype", "float32")
    config.reward.l2_pools = o.get("pools", (1,))
    config.reward.scale = o.get("scale", 1.0)
    config.learner.normalize_entropy = o.get("norm_entropy", False)
    config.reward.standardize_d = o.get("standardize", False)
    config.disc_learner.updates_per_step = o.get("d_updates", 1)
    config.disc_learner.gp_weight = o.get("gp", 1.0)
    before = experiment.build(config, dataset=dataset).init_state(jax.random.PRNGKey(0))
    state, history = _run_steps(config, dataset, 3)
    assert int(state.step) == 3
    assert _finite(state.policy_params) and _finite(state.disc_params)
    for metrics in history:
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert "d_loss" in history[-1] and "policy_loss" in history[-1]
    if config.reward.standardize_d:
        # Terminal rewards standardised over the batch: the mean return is 0.
        assert all(abs(m["episode_return"]) < 1e-4 for m in history)
    if config.conditional:
        assert 0.0 < history[-1]["l2_to_target"] < 1.0
        # The untrained agent paints at random: worse than leaving the canvas blank.
        assert history[0]["l2_to_target_vs_blank"] > 1.0
    # Both networks moved.
    assert _moved(before.policy_params, state.policy_params)
    assert _moved(before.disc_params, state.disc_params)
    # The replay holds the three batches of final canvases.
    assert int(state.replay.count) == 3 * config.batch_size


def _nan_rewards_on_some_steps(monkeypatch):
    """Fault injection: the rewards of about every other step are NaN (decided by the
    parity of the strokes painted), so the policy's gradients are not finite there."""
    original = rewards.episode_rewards

    def patched(cfg, traj, targets, d_score):
        reward = original(cfg, traj, targets, d_score)
        return jnp.where(jnp.sum(traj.action["flag"]) % 2 == 0, jnp.nan, reward)

    monkeypatch.setattr(rewards, "episode_rewards", patched)


def test_non_finite_updates_are_skipped_and_counted(dataset, monkeypatch):
    _nan_rewards_on_some_steps(monkeypatch)
    exp = experiment.build(_config(), dataset=dataset)
    step_fn = train_step.make_train_step(exp)
    state = exp.init_state(jax.random.PRNGKey(0))
    seen, total = set(), 0
    for i in range(8):
        before = jax.device_get((state.policy_params, state.policy_opt_state.inner_state,
                                 state.policy_ema))
        state, metrics = step_fn(state, jax.random.PRNGKey(i))
        after = jax.device_get((state.policy_params, state.policy_opt_state.inner_state,
                                state.policy_ema))
        skipped = int(metrics["skipped_policy_updates"]) - total
        total += skipped
        assert skipped in (0, 1) and int(metrics["skipped_in_a_row"]) <= i + 1
        if skipped:  # parameters, Adam's moments and the average exactly as they were
            _assert_same(before, after)
        else:
            assert _moved(before[0], after[0]) and _finite(after)
        seen.add(skipped)
    assert seen == {0, 1}  # both kinds of step happened
    assert int(state.policy_opt_state.total_notfinite) == total


@pytest.mark.slow  # compiles the patched step again (cached when run after the test above)
def test_non_finite_updates_in_a_row_stop_the_run_keeping_good_checkpoints(
        tmp_path, monkeypatch):
    _nan_rewards_on_some_steps(monkeypatch)
    config = _config(num_train_steps=30, checkpoint_every=1, max_nonfinite_in_a_row=1,
                     sample_every=100)
    with pytest.raises(TrainingFailure, match=r"1 updates in a row had non-finite gradients "
                       r"\(step (\d+), max_nonfinite_in_a_row=1\)") as failure:
        train.train_and_evaluate(config, tmp_path)
    failed_at = int(re.search(r"step (\d+)", str(failure.value)).group(1))
    saved = _checkpoint_steps(tmp_path / "checkpoints")
    assert saved and max(saved) == failed_at - 1  # the failing step is never saved
    records = _records(tmp_path)
    assert max(r["step"] for r in records) == failed_at - 1


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_policy_average_follows_its_update_rule(dataset):
    config = _config()  # small's average, 0.998: the program the run above compiled
    decay = config.learner.ema_decay
    assert 0 < decay < 1
    exp = experiment.build(config, dataset=dataset)
    state = exp.init_state(jax.random.PRNGKey(0))
    step = train_step.make_train_step(exp)
    f64 = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]  # noqa: E731
    # The average starts at the initial parameters.
    for a, p in zip(f64(state.policy_ema), f64(state.policy_params), strict=True):
        np.testing.assert_array_equal(a, p)
    for i in range(2):
        average = f64(state.policy_ema)
        state, _ = step(state, jax.random.PRNGKey(i))
        expected = [decay * a + (1 - decay) * p
                    for a, p in zip(average, f64(state.policy_params), strict=True)]
        got = f64(state.eval_params)
        assert any(not np.allclose(g, p) for g, p in zip(got, f64(state.policy_params),
                                                          strict=True))
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    # Without an average, nothing is kept and the learner's parameters are evaluated.
    config.learner.ema_decay = 0.0
    plain = experiment.build(config, dataset=dataset).init_state(jax.random.PRNGKey(0))
    assert plain.policy_ema is None and plain.eval_params is plain.policy_params


@pytest.mark.slow
def test_two_devices_equal_one_device_on_the_same_global_batch():
    out = device_split.run_split(members=1)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-4000:]


def _train_cli(workdir, *extra, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    workdir_flag = [] if workdir is None else [f"--workdir={workdir}"]
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *workdir_flag, *extra],
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
        (["--config=small", "--config.checkpoint_every=0"], "checkpoint_every=0 must be"),
        (["--config=small", "--config.log_every=0"], "log_every=0 must be"),
        (["--config=small", "--config.keep_checkpoints=0"], "keep_checkpoints=0 must be"),
        (["--config=small", "--config.num_train_steps=0"], "num_train_steps=0 must be"),
        (["--config=small", "--config.disc_learner.learning_rate=-0.0001"],
         "disc_learner.learning_rate=-0.0001: must be a number > 0"),
        (["--config=small", "--max_minutes=-1"], "max_minutes=-1.0 must be"),
        (["--config=small", "--workdir=/proc/spiral_run"], "cannot be written"),
        (["--config=small", "--workdir=memory://run"], "unsupported scheme"),
        (["--config=small", "--workdir=gs://bucket/run"], "gs://bucket/run: "),
        (["--config=small", "--multihost"], "--multihost: "),
    ],
)
def test_command_line_rejects_bad_input_in_one_line_before_compiling(tmp_path, args, message):
    if not any(a.startswith("--workdir") for a in args):
        args = [f"--workdir={tmp_path}", *args]
    out = _train_cli(None, *args, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


_SPLIT_POPULATION_LOOP = textwrap.dedent(
    """
    import json, pathlib, sys
    import jax, numpy as np
    from experiments.configs import small
    from spiral_jax import train
    assert jax.device_count() == 2, jax.devices()
    workdir = pathlib.Path(sys.argv[1])
    c = small.get_config()
    c.num_train_steps, c.checkpoint_every, c.sample_every, c.log_every = 4, 2, 2, 1
    c.max_examples = 256
    c.population.size = 2
    c.population.exploit_every = 2
    result = train.train_and_evaluate(c, workdir)
    # Each member's parameters on its own device, also after the exploit steps; the
    # members' hyperparameters and fitness on both.
    state = result.state
    for leaf in jax.tree.leaves((state.policy_params, state.policy_opt_state)):
        assert tuple(leaf.sharding.spec) == ("members",), leaf.sharding
        assert [s.data.shape[0] for s in leaf.addressable_shards] == [1, 1]
    for leaf in jax.tree.leaves(state.members):
        assert leaf.sharding.is_fully_replicated and leaf.shape == (2,), leaf.sharding
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    pbt = [r for r in records if "source/m0" in r]
    assert [r["step"] for r in pbt] == [2, 4], pbt
    for r in pbt:  # both descend from the fitter (on a tie, from member 0)
        better = 0 if r["fitness/m0"] <= r["fitness/m1"] else 1
        assert r["source/m0"] == r["source/m1"] == better, r
    print("OK")
    """
)


@pytest.mark.slow
def test_a_population_split_over_two_devices_trains_and_exploits(tmp_path):
    """The training loop with each of two members on its own device: steps, exploit
    steps on D's score, and the state kept on the members' devices."""
    env = dict(os.environ, PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-c", _SPLIT_POPULATION_LOOP, str(tmp_path)],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-4000:]


@pytest.mark.slow
def test_a_population_saves_and_resumes_before_any_exploit_step(tmp_path):
    """Independent members (no exploit steps) checkpointed every step: every save
    succeeds with the fitness not yet measured, and the run resumes from them."""
    def config(steps):
        c = _config(num_train_steps=steps, checkpoint_every=1, sample_every=100,
                    log_every=1, eval_every=0)
        c.population.size = 2
        return c

    first = train.train_and_evaluate(config(2), tmp_path)
    assert first.step == 2 and first.exit_code == 0
    assert _checkpoint_steps(tmp_path / "checkpoints")[-1] == 2
    second = train.train_and_evaluate(config(3), tmp_path)
    assert second.step == 3 and second.exit_code == 0
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3]
    result = evaluate_lib.evaluate(tmp_path, num_episodes=16, batch_size=16, gif_episodes=2,
                                   grid_samples=4)
    assert result["population"]["fitness"] == [None, None]
    assert result["population"]["best_member"] == 0
    assert "no fitness measured" in evaluate_lib.format_table(result)


@pytest.mark.slow
def test_a_population_trains_exploits_resumes_and_evaluates_every_member(tmp_path):
    """Two members sharing D, exploit/explore every 2 steps on the in-training Fréchet
    distance: per-member records, PBT records, the fitness kept in the checkpoint
    across a resume, and an evaluation that reports both and paints with the best."""
    def config(steps):
        c = _config(num_train_steps=steps, checkpoint_every=2, sample_every=2, log_every=1,
                    eval_every=2, eval_episodes=16)
        c.population.size = 2
        c.population.exploit_every = 2
        return c

    first = train.train_and_evaluate(config(4), tmp_path)
    members = jax.device_get(first.state.members)
    assert members["learning_rate"].shape == (2,) and np.all(np.isfinite(members["fitness"]))
    records = _records(tmp_path)
    steps = [r for r in records if "episode_return/m1" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    last = steps[-1]
    assert last["episode_return"] == pytest.approx(
        (last["episode_return/m0"] + last["episode_return/m1"]) / 2, abs=1e-6)
    assert {"learning_rate/m0", "entropy_cost/m1"} <= set(last)
    # Wall-clock figures other than minutes and frames/s stay out of metrics.jsonl.
    assert "loop_overhead" not in last
    timing = [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()]
    assert [t["step"] for t in timing] == [1, 2, 3, 4]
    assert all(0.0 <= t["loop_overhead"] < 1.0 for t in timing)
    pbt = [r for r in records if "source/m0" in r]
    assert [r["step"] for r in pbt] == [2, 4]
    for r in pbt:  # both now descend from the fitter (on a tie, from member 0)
        better = 0 if r["fitness/m0"] <= r["fitness/m1"] else 1
        assert r["source/m0"] == r["source/m1"] == better
    evals = [r for r in records if "frechet_train/m1" in r]
    assert all(r["frechet_train"] == min(r["frechet_train/m0"], r["frechet_train/m1"])
               for r in evals)

    second = train.train_and_evaluate(config(6), tmp_path)
    assert second.step == 6
    result = evaluate_lib.evaluate(tmp_path, num_episodes=16, batch_size=16, gif_episodes=2,
                                   grid_samples=4)
    pop = result["population"]
    assert pop["size"] == 2 and len(pop["fitness"]) == 2
    assert pop["best_member"] == int(np.argmin(pop["fitness"]))
    assert {"agent_member_0", "agent_member_1"} <= set(result)
    best = result[f"agent_member_{pop['best_member']}"]
    assert best["frechet_distance"] == pytest.approx(result["agent"]["frechet_distance"])
    assert "population member 1" in evaluate_lib.format_table(result)
