"""The training step and the `experiments.train` command line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from experiments.configs import small
from spiral_jax import datasets as data_lib
from spiral_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset():
    return data_lib.load("mnist5k", "train", image_size=16, channels=1, max_examples=256)


def _run_steps(config, dataset, n):
    trainer = train.make_trainer(config, dataset=dataset)
    state = trainer.init(jax.random.PRNGKey(0))
    step = trainer.make_train_step()
    history = []
    for i in range(n):
        state, metrics = step(state, jax.random.PRNGKey(i))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, history


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "overrides",
    [
        # SPIRAL: WGAN-GP critic, D's score of the final canvas.
        dict(loss="wgan_gp", reward="terminal_d"),
        # SPIRAL++: spectral-norm GAN, per-step credit, discount 0.9, penalties.
        dict(loss="gan", reward="per_step_d", discount=0.9, stroke=0.01, empty=0.1),
        # Conditional: the paper's L2 baseline reward, D still trained on pairs.
        dict(loss="wgan_gp", reward="l2", conditional=True, passes=2),
        dict(loss="gan", reward="l2_per_step", conditional=True, dtype="bfloat16"),
        # The CPU recipe: pooled per-step L2, scaled, normalised entropy.
        dict(loss="wgan_gp", reward="l2_per_step", conditional=True, pools=(1, 2, 4),
             scale=5.0, norm_entropy=True),
        # The unconditional CPU recipe: standardised critic scores, 5 critic updates.
        dict(loss="wgan_gp", reward="terminal_d", standardize=True, d_updates=5, gp=10.0),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_loss_and_reward_trains_without_nans(dataset, overrides):
    config = small.get_config()
    config.disc.loss = overrides["loss"]
    config.reward.kind = overrides["reward"]
    config.reward.discount = overrides.get("discount", 1.0)
    config.reward.stroke_penalty = overrides.get("stroke", 0.0)
    config.reward.empty_penalty = overrides.get("empty", 0.0)
    config.conditional = overrides.get("conditional", False)
    config.learner.passes = overrides.get("passes", 1)
    config.compute_dtype = overrides.get("dtype", "float32")
    config.reward.l2_pools = overrides.get("pools", (1,))
    config.reward.scale = overrides.get("scale", 1.0)
    config.learner.normalize_entropy = overrides.get("norm_entropy", False)
    config.reward.standardize_d = overrides.get("standardize", False)
    config.disc.updates_per_step = overrides.get("d_updates", 1)
    config.disc.gp_weight = overrides.get("gp", 1.0)
    before = train.make_trainer(config, dataset=dataset).init(jax.random.PRNGKey(0))
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
    moved = lambda a, b: any(  # noqa: E731
        not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    assert moved(before.policy_params, state.policy_params)
    assert moved(before.disc_params, state.disc_params)
    # The replay holds the three batches of final canvases.
    assert int(state.replay.count) == 3 * config.batch_size


def test_bad_configs_fail_before_compiling(dataset):
    config = small.get_config()
    config.batch_size = 7
    with pytest.raises(ValueError, match="batch_size=7"):
        train.validate_config(config, num_devices=2)
    config = small.get_config()
    config.reward.kind = "l2"
    with pytest.raises(ValueError, match="conditional=True"):
        train.make_trainer(config, dataset=dataset)
    config = small.get_config()
    config.disc.loss = "hinge"
    with pytest.raises(ValueError, match="hinge"):
        train.make_trainer(config, dataset=dataset)
    config = small.get_config()
    config.env.grid_width = 32
    with pytest.raises(ValueError, match="grid_width"):
        train.make_trainer(config, dataset=dataset)
    config = small.get_config()
    config.reward.l2_pools = (3,)
    with pytest.raises(ValueError, match="does not divide"):
        train.make_trainer(config, dataset=dataset)
    config = small.get_config()
    config.reward.scale = 0.0
    with pytest.raises(ValueError, match="reward.scale"):
        train.make_trainer(config, dataset=dataset)


def test_policy_average_follows_its_update_rule(dataset):
    config = small.get_config()
    config.learner.ema_decay = 0.75
    trainer = train.make_trainer(config, dataset=dataset)
    state = trainer.init(jax.random.PRNGKey(0))
    step = trainer.make_train_step()
    f64 = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]  # noqa: E731
    # The average starts at the initial parameters.
    for a, p in zip(f64(state.policy_ema), f64(state.policy_params), strict=True):
        np.testing.assert_array_equal(a, p)
    for i in range(2):
        average = f64(state.policy_ema)
        state, _ = step(state, jax.random.PRNGKey(i))
        expected = [0.75 * a + 0.25 * p for a, p in zip(average, f64(state.policy_params),
                                                        strict=True)]
        got = f64(state.eval_params)
        assert any(not np.allclose(g, p) for g, p in zip(got, f64(state.policy_params),
                                                          strict=True))
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    # Without an average, nothing is kept and the learner's parameters are evaluated.
    config.learner.ema_decay = 0.0
    plain = train.make_trainer(config, dataset=dataset).init(jax.random.PRNGKey(0))
    assert plain.policy_ema is None and plain.eval_params is plain.policy_params


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_impossible_average_decay_is_rejected(dataset, decay):
    config = small.get_config()
    config.learner.ema_decay = decay
    with pytest.raises(ValueError, match=r"learner.ema_decay=.*must be in \[0, 1\)"):
        train.make_trainer(config, dataset=dataset)


def test_normalized_entropy_weighs_each_part_by_its_largest_entropy(dataset):
    config = small.get_config()
    trainer = train.make_trainer(config, dataset=dataset)
    spec = trainer.env.action_spec()
    assert trainer._max_entropy["flag"] == pytest.approx(np.log(2))
    assert trainer._max_entropy["end"] == pytest.approx(np.log(spec["end"]))
    # Uniform logits: each part's entropy is its maximum, so the normalised entropy of
    # a paint step (all parts count) is the number of parts.
    state = trainer.init(jax.random.PRNGKey(0))
    zero = jax.tree.map(np.zeros_like, state.policy_params)
    t, b = trainer.steps_per_episode, 2
    traj = trainer._rollout(zero, jax.random.split(jax.random.PRNGKey(1), b), None)
    rewards = np.zeros((t, b), np.float32)
    for normalize, want in ((True, None), (False, None)):
        config.learner.normalize_entropy = normalize
        _, m = trainer._policy_loss(zero, traj, rewards)
        paint = np.asarray(traj.action["flag"]) == 1
        if normalize:
            want = np.mean(np.where(paint, len(spec), 2))
        else:
            full = sum(np.log(n) for n in spec.values())
            want = np.mean(np.where(paint, full, np.log(2) + np.log(spec["end"])))
        assert float(m["entropy"]) == pytest.approx(want, rel=1e-5)


_TWO_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np
    from experiments.configs import small
    from spiral_jax import datasets, train
    assert jax.device_count() == 2, jax.devices()
    config = small.get_config()
    # Adam's first step is lr * sign(g) wherever |g| >> eps: a gradient that is zero up
    # to rounding could flip a whole step. A large eps makes the step linear in g.
    config.learner.eps = config.disc.eps = 1.0
    data = datasets.load("mnist5k", "train", image_size=16, channels=1, max_examples=256)
    def run(devices):
        trainer = train.make_trainer(config, mesh=train.make_mesh(devices), dataset=data)
        state = trainer.init(jax.random.PRNGKey(0))
        start = jax.device_get(state)
        state, metrics = trainer.make_train_step()(state, jax.random.PRNGKey(5))
        return start, *jax.device_get((state, metrics))
    start, one, m1 = run(jax.devices()[:1])
    _, two, m2 = run(jax.devices())
    for name in ("policy_params", "disc_params"):
        a, b = jax.tree.leaves(getattr(one, name)), jax.tree.leaves(getattr(two, name))
        init = jax.tree.leaves(getattr(start, name))
        worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
        moved = max(float(np.max(np.abs(x - z))) for x, z in zip(a, init))
        print(name, "max abs diff", worst, "largest update", moved)
        assert moved > 1e-7 and worst < 1e-3 * moved, (name, worst, moved)
    # Each device keeps its own episodes in its part of the replay.
    b = config.batch_size
    per_device = np.asarray(two.replay.canvases).reshape((2, -1) + two.replay.canvases.shape[1:])
    painted_two = np.concatenate([per_device[0, : b // 2], per_device[1, : b // 2]])
    painted_one = np.asarray(one.replay.canvases)[:b]
    assert np.abs(painted_one.astype(int) - painted_two.astype(int)).max() <= 1
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-5, err_msg=k)
    print("OK")
    """
)


def _subprocess_env(devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO)
    return env


def test_two_devices_equal_one_device_on_the_same_global_batch():
    out = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES],
        env=_subprocess_env(devices=2),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-4000:]


def _train_cli(workdir, *extra, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=small", f"--workdir={workdir}",
         "--config.max_examples=256", *extra],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def test_frechet_to_training_digits_is_zero_for_the_training_digits(dataset):
    from spiral_jax import digit_classifier
    from spiral_jax import metrics as metrics_lib
    from spiral_jax.sample_quality import FrechetToTrainingDigits

    config = small.get_config()
    config.eval_episodes = 64
    trainer = train.make_trainer(config, dataset=dataset)
    frechet = FrechetToTrainingDigits(trainer, config)
    train_digits = data_lib.load("mnist5k", "train", image_size=16, channels=1,
                                 max_examples=64).as_float()
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
    state = trainer.init(jax.random.PRNGKey(0))
    del frechet.paint
    canvases = frechet.paint(state.policy_params, jax.random.PRNGKey(1))
    assert canvases.shape == (64, 16, 16, 1)
    assert np.isfinite(frechet(state.policy_params, jax.random.PRNGKey(1)))


def test_command_line_trains_writes_outputs_and_resumes(tmp_path):
    first = _train_cli(tmp_path, "--config.num_train_steps=4", "--config.checkpoint_every=2",
                       "--config.sample_every=2", "--config.log_every=1",
                       "--config.eval_every=2", "--config.eval_episodes=16")
    assert first.returncode == 0, first.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"
    ]
    assert (tmp_path / "samples" / "step_0000004.png").exists()
    assert (tmp_path / "samples" / "real.png").exists()
    assert any((tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "config.json").exists()
    second = _train_cli(tmp_path, "--config.num_train_steps=6", "--config.checkpoint_every=2",
                        "--config.sample_every=100", "--config.log_every=1")
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from step 4" in second.stdout
    assert "6" in [p.name for p in (tmp_path / "checkpoints").iterdir()]
    # Every logged step is in metrics.jsonl; a resumed run's minutes carry on.
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    frechet = [r for r in records if "frechet_train" in r]
    assert [r["step"] for r in records if r not in frechet] == [1, 2, 3, 4, 5, 6]
    minutes = [r["minutes"] for r in records]
    assert np.all(np.diff(minutes) >= 0) and minutes[0] > 0
    assert {"episode_return", "frames", "frames_per_second", "d_loss"} <= set(records[-1])
    # The first invocation's in-training Fréchet distances, records of their own.
    assert [r["step"] for r in frechet] == [2, 4]
    assert all(np.isfinite(r["frechet_train"]) and r["frechet_train"] > 0 for r in frechet)
    # A time limit stops the run early and saves where it stopped.
    third = _train_cli(tmp_path, "--config.num_train_steps=100", "--max_minutes=1e-6")
    assert third.returncode == 0, third.stderr[-4000:]
    assert "--max_minutes=1e-06 reached at step 6" in third.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=nosuch"], "unknown config 'nosuch'; available:"),
        (["--config=small", "--config.nosuch=1"], "nosuch"),
        (["--config=small", "--config.batch_size=many"], "batch_size"),
        (["--config=small", "--config.disc.loss=hinge"], "hinge"),
        (["--config=small", "--config.eval_every=5", "--config.eval_episodes=1"],
         "eval_episodes=1 must be >= 2"),
    ],
)
def test_command_line_rejects_bad_configs(tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}", *args],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
