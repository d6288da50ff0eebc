"""The agent on 3D scenes: the scene action space (heads, masks), rollouts and
re-evaluation through the agent, the `scenes` configs and dataset name, the choice of
environment by config; slow: rollouts and their re-evaluation, the random policy,
train steps (L2 and conditional-D rewards) and `spiral_jax.evaluate` on a scenes run."""

from __future__ import annotations

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.configs import scenes as scenes_config
from experiments.configs import scenes_cpu
from spiral_jax import action_space as AS
from spiral_jax import agent as A
from spiral_jax import baselines, environments, experiment, rollout, scene_data, train_step
from spiral_jax import datasets as data_lib
from spiral_jax.envs import scenes as scenes_env
from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.envs.scenes import ADD, MODIFY, SKIP, Scenes
from spiral_jax.types import FIRST, LAST

WIDTH = 16
TINY_AGENT = A.AgentConfig(channels=8, num_res_blocks=1, lstm_size=32, torso_output=32,
                           cond_hidden=(16,), noise_hidden=(16,), residual_hidden=(16,),
                           conditional=True)


@functools.cache
def tiny_env() -> Scenes:
    return Scenes(episode_length=4, canvas_width=WIDTH, max_objects=3)


def tiny_config():
    """scenes_cpu at test size: 16x16, 3 actions, tiny networks, 4 episodes a step."""
    c = scenes_cpu.get_config()
    c.scene_env.canvas_width = WIDTH
    c.scene_env.episode_length = 4
    c.scene_env.max_objects = 3
    for k in ("channels", "num_res_blocks", "lstm_size", "torso_output", "cond_hidden",
              "noise_hidden", "residual_hidden"):
        c.agent[k] = getattr(TINY_AGENT, k)
    c.disc.channels = (8, 16)
    c.disc_learner.replay_batches = 2
    c.reward.l2_pools = (1, 2)
    c.batch_size = 4
    c.learner.passes = 1
    c.max_examples = 32
    c.num_train_steps = 2
    c.log_every = 1
    c.sample_every = 100
    c.checkpoint_every = 2
    return c


# ------------------------------------------------------------------------------------
# The action space.


def test_scene_spec_heads_and_masks_follow_the_environment():
    env = Scenes()
    spec = AS.canonical_action_spec(env.action_spec())
    assert spec == tuple(env.action_spec().items())
    assert AS.family_of(spec) == AS.SCENES and AS.grid_width_of(spec) == 16
    assert AS.head_order(spec) == ("operation", "position", "shape", "size", "red", "green",
                                   "blue")
    # A spec in another order comes back in the environment's order.
    assert AS.canonical_action_spec(dict(reversed(list(env.action_spec().items())))) == spec
    # LibMyPaint's spec is still read as before.
    lmp = AS.canonical_action_spec(LibMyPaint(grid_width=16).action_spec())
    assert AS.family_of(lmp) == AS.LIBMYPAINT and AS.head_order(lmp)[:2] == ("flag", "end")
    # The agent's mask of an action is the one the environment reports after it.
    ops = jnp.asarray([ADD, SKIP, MODIFY])
    mine = AS.masks_of({"operation": ops}, spec)
    for i, op in enumerate((ADD, SKIP, MODIFY)):
        reported = env.action_mask(jnp.asarray(op))
        assert {k: float(v[i]) for k, v in mine.items()} == {
            k: float(v) for k, v in reported.items()}
    np.testing.assert_array_equal(AS.changes_picture({"operation": ops}, spec),
                                  [True, False, True])
    # The position is embedded as (y, x) in [-1, 1] on the 16x16 grid, like `end`.
    feats = AS.action_features("position", jnp.asarray([0, 15, 16 * 15 + 3]), 256, 16)
    np.testing.assert_allclose(feats, [[-1, -1], [-1, 1], [1, -1 + 2 * 3 / 15]], atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"operation": 2}, "'operation' must have 3"),
    ({"position": 200}, "grid_width"),
    ({"position": 12 * 12}, "grid_width"),
    ({"flag": 2}, "unknown scene action part 'flag'"),
])
def test_impossible_scene_specs_are_refused(change, message):
    spec = dict(Scenes().action_spec()) | change
    with pytest.raises(ValueError, match=message):
        AS.canonical_action_spec(spec)
    spec = dict(Scenes().action_spec())
    del spec["blue"]
    with pytest.raises(ValueError, match="lacks"):
        AS.canonical_action_spec(spec)


# ------------------------------------------------------------------------------------
# The agent in the environment.


@pytest.fixture(scope="module")
def initialised():
    """A tiny conditional agent for tiny scenes, and its parameters."""
    env = tiny_env()
    agent = A.make_agent(env.action_spec(), TINY_AGENT)
    return env, agent, A.init_params(agent, jax.random.key(0), env.observation_shape)


@pytest.fixture(scope="module")
def rolled(initialised):
    """The tiny agent's episodes on tiny scenes, and their re-evaluation."""
    env, agent, params = initialised
    targets = jnp.asarray(scene_data.load("test", image_size=WIDTH, max_examples=8).as_float())
    sample = rollout.make_episode_rollout(env, agent, 8)
    traj = sample(params, jax.random.key(1), targets)
    unroll = jax.jit(functools.partial(agent.apply, method=A.SpiralAgent.unroll))
    return env, agent, params, targets, traj, unroll(params, **traj.unroll_inputs())


def test_the_agent_has_a_spatial_position_head_and_linear_part_heads(initialised):
    _, agent, params = initialised
    heads = params["params"]["heads"]
    assert "position_decoder" in heads and "position_head" not in heads
    for k in ("operation", "shape", "size", "red", "green", "blue"):
        assert heads[f"{k}_head"]["kernel"].shape[-1] == dict(agent.action_spec)[k]


@pytest.mark.slow  # compiles a scenes rollout and unroll (about 30 s)
def test_rollouts_carry_the_environments_masks_and_unroll_to_the_same_log_probs(rolled):
    env, agent, params, targets, traj, out = rolled
    t = env.episode_length - 1
    assert traj.step_type.shape == (t, 8)
    assert int(traj.step_type[0, 0]) == FIRST and int(traj.next_step_type[-1, 0]) == LAST
    # The mask of a_t (from its own operation) is the one the environment put in o_{t+1}.
    for k in traj.action_mask:
        np.testing.assert_array_equal(traj.action_mask[k][:-1],
                                      traj.observation["action_mask"][k][1:])
    np.testing.assert_allclose(out.log_prob, traj.behaviour_log_prob, atol=1e-4, rtol=1e-5)
    # Skips count only the operation's log-prob.
    skip = np.asarray(traj.action["operation"] == SKIP)
    for k in ("position", "shape", "red"):
        assert np.all(np.asarray(out.log_probs[k])[skip] == 0.0)
    # Replaying the actions through the environment alone gives the same final canvases.
    replay = jax.jit(jax.vmap(functools.partial(scenes_env.play, env, jax.random.key(9)),
                              in_axes=1))
    _, canvases = replay(traj.action)
    np.testing.assert_array_equal(canvases[:, -1], traj.final_canvas)


def test_the_position_is_decided_after_the_operation_and_before_the_rest(initialised):
    _, agent, params = initialised
    heads = A.AutoregressiveHeads(agent.action_spec, agent.config)
    z = jax.random.normal(jax.random.key(3), (4, agent.config.lstm_size))
    base = {k: jnp.zeros((4,), jnp.int32) for k, _ in agent.action_spec}
    apply = jax.jit(lambda a: heads.apply({"params": params["params"]["heads"]}, z,
                                          actions=a)[0])
    l0 = apply(base)
    l1 = apply(base | {"position": jnp.full((4,), 37, jnp.int32)})
    np.testing.assert_array_equal(l1["operation"], l0["operation"])
    np.testing.assert_array_equal(l1["position"], l0["position"])
    assert not np.allclose(l1["shape"], l0["shape"])


# ------------------------------------------------------------------------------------
# Configs, environment choice, data.


def test_the_configs_choose_the_scene_environment_and_dataset():
    small = data_lib.load("scenes", "train", image_size=WIDTH, max_examples=8, channels=3)
    assert small.image_shape == (WIDTH, WIDTH, 3) and list(small.indices) == list(range(8))
    assert data_lib.num_examples("scenes", "train") == 45_000  # counted, not rendered
    assert data_lib.num_examples("scenes", "test", max_examples=8) == 8
    np.testing.assert_array_equal(
        small.images, scene_data.load("train", image_size=WIDTH, max_examples=8).images)
    exp = experiment.build(tiny_config(), dataset=small)
    assert isinstance(exp.env, Scenes) and exp.env.canvas_width == WIDTH
    assert AS.family_of(exp.agent.action_spec) == AS.SCENES and exp.agent.config.conditional
    for make, width, actions in ((scenes_config.get_config, 64, 20),
                                 (scenes_cpu.get_config, 32, 5)):
        config = make()
        assert config.environment == "scenes" and config.conditional
        env = Scenes(**config.scene_env)
        assert (env.canvas_width, env.episode_length - 1) == (width, actions)
    assert scenes_config.get_config().batch_size == 64
    # The blank canvas is what a reset shows: white for LibMyPaint, the floor for scenes.
    _, ts = tiny_env().reset(jax.random.key(0))
    np.testing.assert_array_equal(environments.blank_canvas(tiny_env()),
                                  ts.observation["canvas"])
    assert environments.blank_canvas(LibMyPaint()) == 1.0


@pytest.mark.parametrize("change, message", [
    ({"environment": "fluid"}, "environment='fluid' is unknown"),
    ({"reward.stroke_penalty": 0.1}, "stroke_penalty=0.1 is for libmypaint"),
    ({"reward.l2_pools": (3,)}, "pooling factor 3 does not divide the image side 16"),
    ({"scene_env.samples": 0}, "samples must be a positive integer"),
])
def test_bad_scene_settings_fail_before_compiling(change, message):
    config = tiny_config()
    for field, value in change.items():
        *parents, leaf = field.split(".")
        section = config
        for p in parents:
            section = section[p]
        section[leaf] = value
    with pytest.raises(experiment.ConfigError, match=message) as error:
        experiment.build(config, dataset=data_lib.load("scenes", "train", image_size=WIDTH,
                                                        max_examples=8))
    assert "\n" not in str(error.value)


def test_a_scenes_config_without_its_section_names_it():
    config = tiny_config()
    del config["scene_env"]
    with pytest.raises(experiment.ConfigError, match="needs a config.scene_env section"):
        experiment.validate_config(config, num_devices=1)


def test_scenes_are_rgb_only():
    with pytest.raises(ValueError, match="scenes are RGB"):
        data_lib.load("scenes", "test", image_size=WIDTH, max_examples=2, channels=1)


@pytest.mark.slow
def test_the_random_policy_replays_uniform_actions_through_scenes():
    env = tiny_env()
    finals = np.asarray(baselines.make_random_policy(env, 3)(jax.random.key(5)))
    # The same episodes step by step: reset keys and actions as make_random_policy
    # draws them.
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    for i, k in enumerate(jax.random.split(jax.random.key(5), 3)):
        k_reset, k_act = jax.random.split(k)
        actions = baselines.random_actions(dict(env.action_spec()), k_act, 3)
        state, _ = reset(k_reset)
        for t in range(3):
            state, ts = step(state, {n: a[t] for n, a in actions.items()})
        np.testing.assert_array_equal(finals[i], ts.observation["canvas"])
    assert len({f.tobytes() for f in finals}) == 3


# ------------------------------------------------------------------------------------
# Training and evaluation (slow: each compiles a train step).


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["l2_per_step", "l2", "terminal_d"])
def test_a_scenes_train_step_trains_with_l2_and_conditional_d_rewards(reward):
    config = tiny_config()
    config.reward.kind = reward
    config.disc_learner.updates_per_step = 1 if reward == "terminal_d" else 0
    exp = experiment.build(config)
    state = exp.init_state(jax.random.key(0))
    before = jax.tree.map(np.asarray, (state.policy_params, state.disc_params))
    step = train_step.make_train_step(exp)
    for i in range(2):
        state, metrics = step(state, jax.random.key(i))
    metrics = {k: float(v) for k, v in metrics.items()}
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0 <= metrics["strokes"] <= 3
    # The blank canvas of the relative error is the floor: its ratio is ~1 for a
    # policy that draws little, never the ~100 a white reference would give.
    assert 0 < metrics["l2_to_target_vs_blank"] < 5
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before[0],
                           state.policy_params)
    assert any(jax.tree.leaves(changed))
    d_changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before[1],
                             state.disc_params)
    assert any(jax.tree.leaves(d_changed)) == (reward == "terminal_d")


@pytest.mark.slow
def test_evaluate_reports_scene_l2_beside_the_floor_and_random_policy(tmp_path):
    from spiral_jax import evaluate as ev
    from spiral_jax import train

    config = tiny_config()
    train.train_and_evaluate(config, tmp_path)
    result = ev.evaluate(tmp_path, num_episodes=8, batch_size=4, gif_episodes=2,
                         grid_samples=4)
    targets = scene_data.load("test", image_size=WIDTH, max_examples=8).as_float()
    floor = environments.blank_canvas(Scenes(**config.scene_env))
    blank_mse = float(np.mean((targets - floor) ** 2))
    assert result["dataset"] == "scenes" and result["conditional"]
    assert result["baselines"]["blank_canvas"]["mse"] == pytest.approx(blank_mse, rel=1e-6)
    assert result["baselines"]["blank_canvas"]["relative_mse"] == pytest.approx(1.0)
    assert result["baselines"]["blank_canvas"]["ink"] == 0.0
    for row in ("agent", "agent_greedy"):
        assert result[row]["relative_mse"] == pytest.approx(result[row]["mse"] / blank_mse)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(
        json.dumps(result))
    gif = Image.open(tmp_path / "eval" / "painting.gif")
    assert gif.n_frames == config.scene_env.episode_length
    # (target, reconstruction) pairs: 4 pairs of 16-pixel tiles in one row of 8.
    assert Image.open(tmp_path / "eval" / "samples.png").size == (8 * 18 + 2, 18 + 2)
    assert "baseline: blank_canvas" in ev.format_table(result)
    assert pathlib.Path(tmp_path / "eval" / "random_policy.png").exists()
