"""Tests of on-device rollouts (spiral_jax.rollout).

Most tests use `FakePaintEnv`, a cheap environment with LibMyPaint's interface that
paints a filled grid cell per stroke, so that compiling stays fast; one test (marked
slow: compiling the real environment takes half a minute on a CPU) rolls the real
LibMyPaint environment.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from spiral_jax import agent as A
from spiral_jax import rollout as R
from spiral_jax import vtrace
from spiral_jax.types import FIRST, LAST, MID
from tests.agent_configs import SMALL

MOVE_PARTS = ("flag", "end")  # the parts a move (flag 0) uses



class FakeTimeStep(struct.PyTreeNode):
    step_type: jax.Array
    reward: jax.Array
    discount: jax.Array
    observation: dict


class FakeState(struct.PyTreeNode):
    canvas: jax.Array
    episode_step: jax.Array
    step_type: jax.Array
    key: jax.Array


class FakePaintEnv:
    """LibMyPaint's interface; a paint step fills the `end` grid cell with the colour."""

    def __init__(self, episode_length=5, canvas_width=32, grid_width=8, use_color=True):
        self.episode_length = episode_length
        self.canvas_width = canvas_width
        self.grid_width = grid_width
        self.use_color = use_color
        spec = OrderedDict(control=grid_width**2, end=grid_width**2, flag=2, size=2)
        if use_color:
            spec.update(red=20, green=20, blue=20)
        self._spec = spec

    def action_spec(self):
        return OrderedDict(self._spec)

    @property
    def observation_shape(self):
        return (self.canvas_width, self.canvas_width, 3 if self.use_color else 1)

    def _ts(self, state, step_type, discount, flag):
        paint = flag == 1
        mask = {k: jnp.where(paint | (k in MOVE_PARTS), 1.0, 0.0) for k in self._spec}
        obs = {"canvas": state.canvas, "episode_step": state.episode_step, "action_mask": mask}
        return FakeTimeStep(step_type, jnp.zeros(()), jnp.asarray(discount, jnp.float32), obs)

    def reset(self, key):
        state = FakeState(
            canvas=jnp.ones(self.observation_shape, jnp.float32),
            episode_step=jnp.zeros((), jnp.int32),
            step_type=jnp.asarray(FIRST, jnp.int32),
            key=key,
        )
        return state, self._ts(state, state.step_type, 1.0, jnp.zeros((), jnp.int32))

    def step(self, state, action):
        cell = self.canvas_width // self.grid_width
        gy, gx = action["end"] // self.grid_width, action["end"] % self.grid_width
        pix = jnp.arange(self.canvas_width) // cell
        inside = (pix[:, None] == gy) & (pix[None, :] == gx) & (action["flag"] == 1)
        if self.use_color:
            colour = jnp.stack([action[k] for k in ("red", "green", "blue")]) / 19.0
        else:
            colour = jnp.zeros((1,))
        canvas = jnp.where(inside[..., None], colour.astype(jnp.float32), state.canvas)
        step = state.episode_step + 1
        last = step >= self.episode_length - 1
        step_type = jnp.where(last, LAST, MID).astype(jnp.int32)
        new = FakeState(canvas, step, step_type, jax.random.fold_in(state.key, 2))
        stepped = (new, self._ts(new, step_type, jnp.where(last, 0.0, 1.0), action["flag"]))
        restarted = self.reset(jax.random.fold_in(state.key, 1))
        return jax.tree.map(
            lambda r, s: jnp.where(state.step_type == LAST, r, s), restarted, stepped
        )


B = 4
UNROLL = jax.jit(
    lambda agent, p, kw: agent.apply(p, **kw, method=A.SpiralAgent.unroll), static_argnums=0
)


def _setup(env, conditional=False):
    config = dataclasses.replace(SMALL, conditional=conditional)
    agent = A.make_agent(env.action_spec(), config)
    params = A.init_params(agent, jax.random.key(0), env.observation_shape)
    return agent, params


@pytest.fixture(scope="module")
def fake():
    env = FakePaintEnv()
    agent, params = _setup(env)
    episodes = R.make_episode_rollout(env, agent, B)
    return env, agent, params, episodes


def _replay(env, actions, reset_keys):
    """Steps the environment with given [T, B] actions; returns canvases [T + 1, B, ...]."""
    state, ts = jax.vmap(env.reset)(reset_keys)
    canvases = [ts.observation["canvas"]]
    steps = jax.jit(jax.vmap(env.step))
    for t in range(actions["flag"].shape[0]):
        state, ts = steps(state, {k: v[t] for k, v in actions.items()})
        canvases.append(ts.observation["canvas"])
    return jnp.stack(canvases)


def _reset_keys(key, batch):
    """The keys `rollout_episodes` resets its environments with."""
    reset_key, _ = jax.random.split(key)
    env_key, _ = jax.random.split(reset_key)
    return jax.random.split(env_key, batch)


def test_whole_episode_structure_and_replay(fake):
    env, agent, params, episodes = fake
    key = jax.random.key(1)
    traj = episodes(params, key)
    t = env.episode_length - 1
    assert traj.step_type.shape == (t, B)
    np.testing.assert_array_equal(traj.step_type[0], FIRST)
    np.testing.assert_array_equal(traj.step_type[1:], MID)
    np.testing.assert_array_equal(traj.next_step_type[:-1], MID)
    np.testing.assert_array_equal(traj.next_step_type[-1], LAST)
    np.testing.assert_array_equal(traj.discount[:-1], 1.0)
    np.testing.assert_array_equal(traj.discount[-1], 0.0)
    np.testing.assert_array_equal(traj.valid, 1.0)
    np.testing.assert_array_equal(
        traj.observation["episode_step"], np.tile(np.arange(t)[:, None], (1, B))
    )
    # The canvases are what the environment makes of the recorded actions.
    canvases = _replay(env, traj.action, _reset_keys(key, B))
    np.testing.assert_array_equal(traj.observation["canvas"], canvases[:-1])
    np.testing.assert_array_equal(traj.final_canvas, canvases[-1])
    np.testing.assert_array_equal(traj.next_canvas, canvases[1:])
    # One noise vector per episode, different across episodes.
    np.testing.assert_array_equal(traj.noise, np.broadcast_to(traj.noise[0], traj.noise.shape))
    assert not np.allclose(traj.noise[0, 0], traj.noise[0, 1])
    assert traj.noise.shape == (t, B, 10)
    # The mask of a_t is the one the environment reports in o_{t+1}.
    for k in traj.action_mask:
        np.testing.assert_array_equal(
            traj.action_mask[k][:-1], traj.observation["action_mask"][k][1:]
        )
    np.testing.assert_array_equal(traj.observation["action_mask"]["control"][0], 0.0)
    # Painted something and moved somewhere.
    assert 0 < int(traj.action["flag"].sum()) < traj.action["flag"].size


def test_behaviour_log_prob_equals_unroll(fake):
    env, agent, params, episodes = fake
    traj = episodes(params, jax.random.key(2))
    out = UNROLL(agent, params, traj.unroll_inputs())
    np.testing.assert_allclose(out.log_prob, traj.behaviour_log_prob, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(out.baseline, traj.baseline, atol=2e-5, rtol=1e-5)
    for k in traj.behaviour_logits:
        np.testing.assert_allclose(out.logits[k], traj.behaviour_logits[k], atol=2e-5, rtol=1e-5)
        np.testing.assert_array_equal(out.masks[k], traj.action_mask[k])
    # The trajectory plugs into V-trace: on-policy, the importance weights are 1.
    rewards = jnp.zeros_like(traj.discount).at[-1].set(1.0)
    vt = vtrace.from_logits(
        traj.behaviour_logits,
        out.logits,
        traj.action,
        traj.action_mask,
        traj.discount,
        rewards,
        out.baseline,
        traj.bootstrap_value,
    )
    np.testing.assert_allclose(vt.log_rhos, 0.0, atol=1e-4)
    np.testing.assert_allclose(vt.behaviour_action_log_probs, traj.behaviour_log_prob, atol=1e-5)
    np.testing.assert_allclose(vt.vs[-1], 1.0, atol=1e-6)  # terminal: v_s = r


def test_greedy_rollout_takes_each_parts_argmax(fake):
    env, agent, params, episodes = fake
    greedy = R.make_episode_rollout(env, agent, B, greedy=True)
    traj = greedy(params, jax.random.key(2))
    # The logits recorded at each step were computed with the earlier parts' choices
    # fed back (teacher-forced by the unroll too): each chosen part is their argmax.
    out = UNROLL(agent, params, traj.unroll_inputs())
    for k, logits in traj.behaviour_logits.items():
        np.testing.assert_array_equal(traj.action[k], np.argmax(np.asarray(logits), -1))
        np.testing.assert_allclose(out.logits[k], logits, atol=2e-5, rtol=1e-5)
    # Not what sampling does with the same key.
    sampled = episodes(params, jax.random.key(2))
    assert any(np.any(sampled.action[k] != traj.action[k]) for k in traj.action)


def test_same_key_same_rollout(fake):
    env, agent, params, episodes = fake
    a = episodes(params, jax.random.key(3))
    b = episodes(params, jax.random.key(3))
    c = episodes(params, jax.random.key(4))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert np.any(np.asarray(a.action["end"]) != np.asarray(c.action["end"]))


@pytest.mark.slow  # continuing unrolls: the training step rolls whole episodes
def test_continuing_rollouts_carry_state_across_calls(fake):
    env, agent, params, _ = fake
    steps = 3  # episodes of 5 observations: the second call crosses an episode boundary
    roll = R.make_rollout(env, agent, steps)
    state0 = R.init_rollout_state(env, agent, jax.random.key(5), B)
    state1, t1 = roll(params, state0, jax.random.key(6))
    state2, t2 = roll(params, state1, jax.random.key(7))
    _, t3 = roll(params, state2, jax.random.key(8))

    np.testing.assert_array_equal(t2.observation["canvas"][0], t1.final_canvas)
    np.testing.assert_allclose(t1.bootstrap_value, t2.baseline[0], atol=1e-6)
    np.testing.assert_allclose(t2.bootstrap_value, t3.baseline[0], atol=1e-6)
    # Steps 0..4 are one episode (LAST at step 4), steps 5.. the next one.
    st = np.concatenate([t1.step_type, t2.step_type, t3.step_type])
    np.testing.assert_array_equal(st[:, 0], [FIRST, MID, MID, MID, LAST, FIRST, MID, MID, MID])
    disc = np.concatenate([t1.discount, t2.discount, t3.discount])
    np.testing.assert_array_equal(disc[:, 0], [1, 1, 1, 0, 0, 1, 1, 1, 0])
    valid = np.concatenate([t1.valid, t2.valid, t3.valid])
    np.testing.assert_array_equal(valid[:, 0], [1, 1, 1, 1, 0, 1, 1, 1, 1])
    noise = np.concatenate([t1.noise, t2.noise, t3.noise])
    np.testing.assert_array_equal(noise[:5], np.broadcast_to(noise[0], noise[:5].shape))
    np.testing.assert_array_equal(noise[5:], np.broadcast_to(noise[5], noise[5:].shape))
    assert not np.allclose(noise[0], noise[5])

    # Re-evaluating the joined trajectory from the first initial state (the LSTM is
    # reset at the FIRST step in the middle) gives back every behaviour log-prob.
    joined = jax.tree.map(lambda *x: jnp.concatenate(x), t1, t2, t3)
    inputs = dict(joined.unroll_inputs(), state=t1.initial_agent_state)
    out = UNROLL(agent, params, inputs)
    np.testing.assert_allclose(out.log_prob, joined.behaviour_log_prob, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(out.baseline, joined.baseline, atol=2e-5, rtol=1e-5)


def test_grayscale_conditional_rollout():
    env = FakePaintEnv(episode_length=4, canvas_width=16, grid_width=4, use_color=False)
    agent, params = _setup(env, conditional=True)
    targets = jax.random.uniform(jax.random.key(9), (2, 16, 16, 1))
    episodes = R.make_episode_rollout(env, agent, 2)
    traj = episodes(params, jax.random.key(10), targets)
    assert traj.observation["canvas"].shape == (3, 2, 16, 16, 1)
    np.testing.assert_array_equal(
        traj.observation["target"], np.broadcast_to(targets, (3, 2, 16, 16, 1))
    )
    assert set(traj.action) == {"control", "end", "flag", "size"}
    assert traj.behaviour_logits["end"].shape == (3, 2, 16)
    out = UNROLL(agent, params, traj.unroll_inputs())
    np.testing.assert_allclose(out.log_prob, traj.behaviour_log_prob, atol=1e-4, rtol=1e-5)
    # The target matters to a conditional agent.
    other = episodes(params, jax.random.key(10), 1.0 - targets)
    assert not np.allclose(other.baseline, traj.baseline)
    with pytest.raises(ValueError, match="needs targets of shape"):
        R.rollout_episodes(env, agent, params, jax.random.key(0), 2)
    with pytest.raises(ValueError, match="does not match"):
        R.make_rollout(FakePaintEnv(), agent, 3)


@pytest.mark.slow  # compiling the real environment's step twice takes ~30 s on 2 cores
def test_real_libmypaint_episode():
    from spiral_jax.envs.libmypaint import LibMyPaint

    env = LibMyPaint(
        episode_length=4, canvas_width=32, grid_width=8, brush_sizes=(2, 6), brush_jitter=True
    )
    agent, params = _setup(env)
    key = jax.random.key(11)
    traj = R.make_episode_rollout(env, agent, 2)(params, key)
    assert traj.observation["canvas"].shape == (3, 2, 32, 32, 3)
    np.testing.assert_array_equal(traj.next_step_type[-1], LAST)
    for k in traj.action_mask:
        np.testing.assert_array_equal(
            traj.action_mask[k][:-1], traj.observation["action_mask"][k][1:]
        )
    # Replaying the actions with the same environment keys gives the same canvases.
    canvases = _replay(env, traj.action, _reset_keys(key, 2))
    np.testing.assert_allclose(traj.next_canvas, canvases[1:], atol=1e-6)
    out = UNROLL(agent, params, traj.unroll_inputs())
    np.testing.assert_allclose(out.log_prob, traj.behaviour_log_prob, atol=1e-4, rtol=1e-5)
