"""Tests of SPIRAL's agent network (spiral_jax.agent) and of the action space it acts
in (spiral_jax.action_space).

Small nets (`tests/agent_configs.SMALL`, 32x32 canvases, 8x8 grids) keep this fast; the only
paper-sized net is traced for shapes (no compilation) to count its parameters. The
layers it is built from are tested in test_layers.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import action_space as AS
from spiral_jax import agent as A
from spiral_jax.layers import LSTMState
from spiral_jax.types import FIRST
from tests.agent_configs import SMALL

B, T = 3, 6
CANVAS = 32
GRID = 8
FULL_SPEC = {
    "control": GRID * GRID,
    "end": GRID * GRID,
    "flag": 2,
    "pressure": 10,
    "size": 3,
    "red": 20,
    "green": 20,
    "blue": 20,
}
# sd of a standard normal truncated at +-2 (what "truncated normal with sd s" has).
TRUNC_SD = 0.8796256610342398


@pytest.fixture(scope="module")
def small():
    agent = A.make_agent(FULL_SPEC, SMALL)
    params = A.init_params(agent, jax.random.key(0), (CANVAS, CANVAS, 3))
    step = jax.jit(functools.partial(agent.apply, method=A.SpiralAgent.step))
    unroll = jax.jit(functools.partial(agent.apply, method=A.SpiralAgent.unroll))
    return agent, params, step, unroll


def _env_like_inputs(seed: int, step_types: np.ndarray, channels: int = 3):
    """Random canvases and noise, time-major [T, B]."""
    rng = np.random.default_rng(seed)
    t, b = step_types.shape
    canvas = rng.uniform(size=(t, b, CANVAS, CANVAS, channels)).astype(np.float32)
    noise = rng.normal(size=(t, b, 10)).astype(np.float32)
    return jnp.asarray(canvas), jnp.asarray(noise)


def _masks_seen(prev_flag: jnp.ndarray, step_type: jnp.ndarray, names) -> dict:
    """The mask an environment reports in an observation: that of the previous action,
    and the move mask at FIRST (SPIRAL does this)."""
    flag = jnp.where(step_type == FIRST, 0, prev_flag)
    return AS.action_masks(flag, names)


def _run_steps(agent, params, step, step_types, canvas, noise, key):
    """Runs `step` over time with sampled actions; returns what the unroll needs."""
    names = [k for k, _ in agent.action_spec]
    state0 = A.initial_state(agent.action_spec, agent.config, step_types.shape[1])
    state = state0
    obs_masks, actions, logits, baselines = [], [], [], []
    for t in range(step_types.shape[0]):
        mask = _masks_seen(state.prev_action["flag"], step_types[t], names)
        obs = {"canvas": canvas[t], "action_mask": mask}
        out, state = step(params, obs, step_types[t], state, noise[t], jax.random.fold_in(key, t))
        obs_masks.append(mask)
        actions.append(out.action)
        logits.append(out.logits)
        baselines.append(out.baseline)
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    obs = {"canvas": canvas, "action_mask": stack(obs_masks)}
    return obs, stack(actions), stack(logits), jnp.stack(baselines), state0, state


STEP_TYPES = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 1, 1]], np.int32)


def test_sampled_log_prob_equals_unroll_log_prob(small):
    agent, params, step, unroll = small
    step_types = jnp.asarray(STEP_TYPES)
    canvas, noise = _env_like_inputs(1, STEP_TYPES)
    obs, actions, logits, baselines, state0, state_t = _run_steps(
        agent, params, step, step_types, canvas, noise, jax.random.key(7)
    )
    out = unroll(params, obs, step_types, actions, noise, state0)
    masks = AS.action_masks(actions["flag"], agent.action_spec)
    sampled_lp = AS.masked_log_probs(logits, actions, masks)
    for k in logits:
        np.testing.assert_allclose(out.logits[k], logits[k], atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(out.log_probs[k], sampled_lp[k], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(out.log_prob, sum(sampled_lp.values()), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(out.baseline, baselines, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(out.final_state.lstm.hidden, state_t.lstm.hidden, atol=2e-5)
    for k in actions:
        np.testing.assert_array_equal(out.final_state.prev_action[k], state_t.prev_action[k])
    # Something was actually sampled: some moves and some paints, log-probs < 0.
    assert 0 < int(actions["flag"].sum()) < actions["flag"].size
    assert float(out.log_prob.max()) < 0.0


def test_decoder_skips_add_only_their_projections_and_unroll_as_steps(small):
    """With `decoder_skips=1` each location decoder gains one 1x1 conv from the torso's
    8x8 map (and nothing else); with that conv zeroed the agent is SPIRAL's network with
    the same parameters; and the unroll re-evaluates what the steps sampled."""
    agent, params, _, _ = small
    skip_agent = A.make_agent(FULL_SPEC, dataclasses.replace(SMALL, decoder_skips=1))
    skip_params = A.init_params(skip_agent, jax.random.key(0), (CANVAS, CANVAS, 3))
    c = SMALL.channels
    assert A.param_count(skip_params) == A.param_count(params) + 2 * (c * c + c)
    for k in ("end_decoder", "control_decoder"):
        assert skip_params["params"]["heads"][k]["skip_0"]["kernel"].shape == (1, 1, c, c)

    zeroed = jax.tree.map(lambda x: x, params)
    for k in ("end_decoder", "control_decoder"):
        zeroed["params"]["heads"][k] = dict(
            params["params"]["heads"][k],
            skip_0={"kernel": jnp.zeros((1, 1, c, c)), "bias": jnp.zeros((c,))},
        )
    step_types = jnp.asarray(STEP_TYPES)
    canvas, noise = _env_like_inputs(3, STEP_TYPES)
    obs, actions, _, _, state0, _ = _run_steps(
        agent, params, jax.jit(functools.partial(agent.apply, method=A.SpiralAgent.step)),
        step_types, canvas, noise, jax.random.key(2))
    skip_unroll = jax.jit(functools.partial(skip_agent.apply, method=A.SpiralAgent.unroll))
    plain = agent.apply(params, obs, step_types, actions, noise, state0,
                        method=A.SpiralAgent.unroll)
    same = skip_unroll(zeroed, obs, step_types, actions, noise, state0)
    for k in plain.logits:
        np.testing.assert_allclose(same.logits[k], plain.logits[k], atol=1e-5, rtol=1e-5)

    skip_step = jax.jit(functools.partial(skip_agent.apply, method=A.SpiralAgent.step))
    obs, actions, logits, _, state0, _ = _run_steps(
        skip_agent, skip_params, skip_step, step_types, canvas, noise, jax.random.key(4))
    out = skip_unroll(skip_params, obs, step_types, actions, noise, state0)
    for k in logits:
        np.testing.assert_allclose(out.logits[k], logits[k], atol=2e-5, rtol=1e-5)
    # ... and the skip matters: zeroing its conv changes the location logits only.
    unskipped = jax.tree.map(lambda x: x, skip_params)
    for k in ("end_decoder", "control_decoder"):
        unskipped["params"]["heads"][k]["skip_0"] = {
            "kernel": jnp.zeros((1, 1, c, c)), "bias": jnp.zeros((c,))}
    out0 = skip_unroll(unskipped, obs, step_types, actions, noise, state0)
    assert not np.allclose(out0.logits["end"], out.logits["end"], atol=1e-3)
    np.testing.assert_array_equal(out0.logits["flag"], out.logits["flag"])

    too_many = A.make_agent(FULL_SPEC, dataclasses.replace(SMALL, decoder_skips=2))
    with pytest.raises(ValueError, match="agent.decoder_skips=2: at most 1 here"):
        A.init_params(too_many, jax.random.key(0), (CANVAS, CANVAS, 3))


def test_move_steps_count_only_flag_and_end(small):
    agent, params, _, unroll = small
    step_types = jnp.asarray(STEP_TYPES)
    canvas, noise = _env_like_inputs(2, STEP_TYPES)
    rng = np.random.default_rng(3)
    actions = {
        k: jnp.asarray(rng.integers(0, n, size=(T, B)), jnp.int32) for k, n in FULL_SPEC.items()
    }
    flag = np.tile(np.array([0, 1, 0], np.int32), (T, 1))
    flag[::2] = 1 - flag[::2]
    actions["flag"] = jnp.asarray(flag)
    prev_flag = jnp.concatenate([jnp.zeros((1, B), jnp.int32), actions["flag"][:-1]])
    obs = {"canvas": canvas, "action_mask": _masks_seen(prev_flag, step_types, FULL_SPEC)}
    state0 = A.initial_state(agent.action_spec, agent.config, B)
    out = unroll(params, obs, step_types, actions, noise, state0)
    move = flag == 0
    for k in FULL_SPEC:
        lp, ent, mask = (np.asarray(x[k]) for x in (out.log_probs, out.entropies, out.masks))
        if k in ("flag", "end"):
            assert np.all(mask == 1.0)
            assert np.all(lp < 0) and np.all(ent > 0)
        else:
            np.testing.assert_array_equal(mask, (~move).astype(np.float32))
            assert np.all(lp[move] == 0.0) and np.all(ent[move] == 0.0)
            assert np.all(lp[~move] < 0) and np.all(ent[~move] > 0)
    np.testing.assert_allclose(out.entropy, sum(out.entropies.values()), rtol=1e-6)


def test_masked_log_probs_and_entropies_match_float64_numpy():
    rng = np.random.default_rng(4)
    spec = {"control": 16, "end": 16, "flag": 2, "size": 4, "red": 20}
    shape = (5, 7)
    logits = {
        k: rng.normal(scale=3.0, size=shape + (n,)).astype(np.float32) for k, n in spec.items()
    }
    actions = {k: rng.integers(0, n, size=shape).astype(np.int32) for k, n in spec.items()}
    masks = AS.action_masks(jnp.asarray(actions["flag"]), tuple(spec))
    lp = AS.masked_log_probs({k: jnp.asarray(v) for k, v in logits.items()}, actions, masks)
    ent = AS.masked_entropies({k: jnp.asarray(v) for k, v in logits.items()}, masks)
    for k, lg in logits.items():
        x = lg.astype(np.float64)
        logz = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
        logp = x - logz[..., None]
        want_mask = np.where((actions["flag"] == 1) | (k in ("flag", "end")), 1.0, 0.0)
        want_lp = np.take_along_axis(logp, actions[k][..., None], -1)[..., 0] * want_mask
        want_ent = -(np.exp(logp) * logp).sum(-1) * want_mask
        np.testing.assert_allclose(masks[k], want_mask)
        np.testing.assert_allclose(lp[k], want_lp, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ent[k], want_ent, rtol=1e-5, atol=1e-5)


def test_lstm_state_resets_at_first_steps(small):
    """Outputs from a FIRST step on do not depend on anything before it."""
    agent, params, _, unroll = small
    step_types = np.ones((T, B), np.int32)
    step_types[0] = FIRST
    step_types[3] = FIRST
    step_types = jnp.asarray(step_types)
    rng = np.random.default_rng(6)

    def trajectory(seed_prefix: int):
        canvas, noise = _env_like_inputs(10, np.asarray(step_types))
        acts = {k: rng.integers(0, n, size=(T, B)) for k, n in FULL_SPEC.items()}
        other_canvas, other_noise = _env_like_inputs(seed_prefix, np.asarray(step_types))
        # Different canvases, noise and actions before t = 3; the same from t = 3 on.
        canvas = canvas.at[:3].set(other_canvas[:3])
        noise = noise.at[:3].set(other_noise[:3])
        return canvas, noise, acts

    canvas_a, noise_a, acts_a = trajectory(11)
    canvas_b, noise_b, acts_b = trajectory(12)
    for k in FULL_SPEC:
        acts_b[k][3:] = acts_a[k][3:]
    acts_a = {k: jnp.asarray(v, jnp.int32) for k, v in acts_a.items()}
    acts_b = {k: jnp.asarray(v, jnp.int32) for k, v in acts_b.items()}
    outs = []
    for canvas, noise, acts in ((canvas_a, noise_a, acts_a), (canvas_b, noise_b, acts_b)):
        prev_flag = jnp.concatenate([jnp.zeros((1, B), jnp.int32), acts["flag"][:-1]])
        obs = {"canvas": canvas, "action_mask": _masks_seen(prev_flag, step_types, FULL_SPEC)}
        state0 = A.initial_state(agent.action_spec, agent.config, B)
        outs.append(unroll(params, obs, step_types, acts, noise, state0))
    a, b = outs
    assert not np.allclose(a.baseline[:3], b.baseline[:3])
    np.testing.assert_allclose(a.baseline[3:], b.baseline[3:], atol=1e-6)
    for k in FULL_SPEC:
        np.testing.assert_allclose(a.logits[k][3:], b.logits[k][3:], atol=1e-5)
    np.testing.assert_allclose(a.final_state.lstm.cell, b.final_state.lstm.cell, atol=1e-6)

    # And a non-zero incoming state is ignored at a FIRST step.
    k = jax.random.key(1)
    noisy = A.AgentState(
        lstm=LSTMState(
            hidden=jax.random.normal(k, (B, agent.config.lstm_size)),
            cell=jax.random.normal(jax.random.fold_in(k, 1), (B, agent.config.lstm_size)),
        ),
        prev_action={key: jnp.full((B,), 1, jnp.int32) for key in FULL_SPEC},
    )
    prev_flag = jnp.concatenate([jnp.zeros((1, B), jnp.int32), acts_a["flag"][:-1]])
    obs = {"canvas": canvas_a, "action_mask": _masks_seen(prev_flag, step_types, FULL_SPEC)}
    c = unroll(params, obs, step_types, acts_a, noise_a, noisy)
    np.testing.assert_allclose(c.baseline, a.baseline, atol=1e-6)


def test_heads_are_autoregressive_in_spiral_order(small):
    """Changing part k's action changes the logits of the parts after it in
    (flag, end, control, size, pressure, red, green, blue) and none before it."""
    agent, params, _, _ = small
    rng = np.random.default_rng(8)
    z = jnp.asarray(rng.normal(size=(4, agent.config.lstm_size)), jnp.float32)
    base = {k: jnp.asarray(rng.integers(0, n, size=(4,)), jnp.int32) for k, n in FULL_SPEC.items()}
    heads = A.AutoregressiveHeads(agent.action_spec, agent.config)
    hp = {"params": params["params"]["heads"]}
    apply = jax.jit(lambda actions: heads.apply(hp, z, actions=actions))
    logits0, taken = apply(base)
    for k in FULL_SPEC:
        np.testing.assert_array_equal(taken[k], base[k])
    order = AS.HEAD_ORDER
    for i, k in enumerate(order[:-1]):
        changed = dict(base)
        changed[k] = (base[k] + 1) % FULL_SPEC[k]
        logits1, _ = apply(changed)
        for before in order[: i + 1]:
            np.testing.assert_array_equal(logits1[before], logits0[before])
        assert not np.allclose(logits1[order[i + 1]], logits0[order[i + 1]])


def test_sampling_follows_the_logits(small):
    """With identical inputs, 3000 sampled `flag`s match softmax(logits) in frequency
    within 4 standard errors, and so do the `end`s given the flag (its logits depend on
    the sampled flag, nothing else).

    The 3000 samples are 1000 calls of the batch-of-3 step the other tests compile
    (keys folded from one): compiling and running the step for a batch of 3000 would
    take several times longer."""
    agent, params, step, _ = small
    calls = 1000
    obs = A.dummy_observation(agent, (CANVAS, CANVAS, 3), B)
    state = A.initial_state(agent.action_spec, agent.config, B)
    noise = jnp.ones((B, 10), jnp.float32)
    first = jnp.zeros((B,), jnp.int32)

    def sample(key: jax.Array, n_calls: int):
        outs = [step(params, obs, first, state, noise, jax.random.fold_in(key, i))[0]
                for i in range(n_calls)]
        return jax.tree.map(lambda *x: np.concatenate(x), *jax.device_get(outs))

    out = sample(jax.random.key(9), calls)
    assert out.action["flag"].shape == (B * calls,)

    def check(logits: np.ndarray, actions: np.ndarray) -> None:
        np.testing.assert_allclose(logits, np.broadcast_to(logits[0], logits.shape), atol=1e-6)
        x = logits[0].astype(np.float64)
        p = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        freq = np.bincount(actions, minlength=p.size) / actions.size
        se = np.sqrt(p * (1 - p) / actions.size)
        assert np.all(np.abs(freq - p) <= 4 * se + 1e-3), (freq, p)

    flag = np.asarray(out.action["flag"])
    check(np.asarray(out.logits["flag"]), flag)
    for f in (0, 1):
        assert (flag == f).sum() > 100
        check(np.asarray(out.logits["end"])[flag == f], np.asarray(out.action["end"])[flag == f])
    # Same key, same actions; another key, other actions.
    again = sample(jax.random.key(9), 20)
    other = sample(jax.random.key(10), 20)
    np.testing.assert_array_equal(again.action["end"], out.action["end"][: 20 * B])
    assert np.any(other.action["end"] != out.action["end"][: 20 * B])


def test_location_features_are_y_x_in_minus_one_one():
    g = 8
    idx = jnp.arange(g * g)
    feats = np.asarray(AS.action_features("end", idx, g * g, g))
    y, x = np.divmod(np.arange(g * g), g)
    np.testing.assert_allclose(feats[:, 0], -1 + 2 * y / (g - 1), atol=1e-6)
    np.testing.assert_allclose(feats[:, 1], -1 + 2 * x / (g - 1), atol=1e-6)
    onehot = np.asarray(AS.action_features("size", jnp.array([2]), 4, g))
    np.testing.assert_array_equal(onehot, [[0, 0, 1, 0]])


def _count_paper_params(channels_in: int, spec: dict, grid: int, canvas: int) -> int:
    """SPIRAL's default agent, counted layer by layer from spiral/agents/default.py."""
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731
    mlp = lambda i, sizes: sum(lin(a, b) for a, b in zip((i,) + sizes[:-1], sizes, strict=True))  # noqa: E731
    res = 8 * (conv(3, 32, 32) + conv(1, 32, 32))
    feats = {k: 2 if k in ("control", "end") else n for k, n in spec.items()}
    torso = conv(5, channels_in + 2, 32)
    torso += sum(lin(f, 16) for f in feats.values())
    torso += mlp(16 * len(spec), (64, 32, 32)) + mlp(10, (64, 32, 32))
    stages = int(math.log2(canvas // 8))
    torso += stages * conv(4, 32, 32) + conv(3, 32, 32) + res
    torso += lin(8 * 8 * 32, 256)
    core = (256 + 256) * 4 * 256 + 4 * 256
    up = int(math.log2(grid // 4))
    decoder = conv(3, 16, 32) + res + up * conv(4, 32, 32) + conv(3, 32, 1)
    heads = 0
    for k, n in spec.items():
        heads += decoder if k in ("control", "end") else lin(256, n)
        heads += lin(feats[k], 16) + mlp(256 + 16, (16, 32, 256))
    return torso + core + heads + lin(256, 1)


def test_paper_sized_agent_parameter_count():
    spec = dict(FULL_SPEC, control=1024, end=1024, size=6)
    agent = A.make_agent(spec, A.AgentConfig())
    shapes = jax.eval_shape(
        functools.partial(agent.init, method=A.SpiralAgent.step),
        jax.random.key(0),
        A.dummy_observation(agent, (64, 64, 3)),
        jnp.zeros((1,), jnp.int32),
        A.initial_state(agent.action_spec, agent.config, 1),
        jnp.zeros((1, 10)),
        jax.random.key(0),
    )
    count = A.param_count(shapes)
    assert count == _count_paper_params(3, spec, 32, 64)
    assert count == 1_613_329  # the figure reported in the docs; recomputed above


@pytest.mark.parametrize(
    "channels,conditional,canvas,grid,parts",
    [
        (3, False, 32, 8, ("control", "end", "flag", "pressure", "size", "red", "green", "blue")),
        (1, True, 32, 16, ("control", "end", "flag", "size")),
        (1, False, 64, 32, ("control", "end", "flag")),
        (3, True, 64, 32, ("control", "end", "flag", "pressure", "red", "green", "blue")),
        (3, False, 16, 4, ("control", "end", "flag")),
    ],
)
def test_shapes(channels, conditional, canvas, grid, parts):
    nums = dict(FULL_SPEC, control=grid * grid, end=grid * grid)
    spec = {k: nums[k] for k in parts}
    config = dataclasses.replace(SMALL, conditional=conditional)
    agent = A.make_agent(spec, config)
    obs = A.dummy_observation(agent, (canvas, canvas, channels), B)
    state = A.initial_state(agent.action_spec, config, B)
    step_args = (obs, jnp.zeros((B,), jnp.int32), state, jnp.zeros((B, 10)), jax.random.key(0))
    params = jax.eval_shape(
        functools.partial(agent.init, method=A.SpiralAgent.step), jax.random.key(0), *step_args
    )
    out, new_state = jax.eval_shape(
        functools.partial(agent.apply, method=A.SpiralAgent.step), params, *step_args
    )
    assert set(out.logits) == set(spec)
    for k, n in spec.items():
        assert out.logits[k].shape == (B, n)
        assert out.action[k].shape == (B,) and out.action[k].dtype == jnp.int32
    assert out.baseline.shape == (B,)
    assert new_state.lstm.hidden.shape == (B, config.lstm_size)
    first_conv = params["params"]["torso"]["conv"]["kernel"].shape
    assert first_conv == (5, 5, channels * (2 if conditional else 1) + 2, config.channels)
    tm = lambda x: jnp.broadcast_to(x, (T,) + x.shape)  # noqa: E731
    u = jax.eval_shape(
        functools.partial(agent.apply, method=A.SpiralAgent.unroll),
        params,
        jax.tree.map(tm, obs),
        jnp.zeros((T, B), jnp.int32),
        {k: jnp.zeros((T, B), jnp.int32) for k in spec},
        jnp.zeros((T, B, 10)),
        state,
    )
    for k, n in spec.items():
        assert u.logits[k].shape == (T, B, n)
        assert u.log_probs[k].shape == u.entropies[k].shape == u.masks[k].shape == (T, B)
    assert u.log_prob.shape == u.entropy.shape == u.baseline.shape == (T, B)


def test_init_params_follow_sonnet_initialisers(small):
    agent, params, _, _ = small
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    checked = 0
    for path, leaf in flat:
        name = path[-1].key
        x = np.asarray(leaf, np.float64)
        if name == "bias":
            assert np.all(x == 0.0), jax.tree_util.keystr(path)
            continue
        fan = (
            agent.config.torso_output + agent.config.lstm_size
            if name in ("w_gates", "b_gates")
            else int(np.prod(leaf.shape[:-1]))
        )
        assert np.all(np.abs(x) <= 2.0 / math.sqrt(fan) + 1e-7), jax.tree_util.keystr(path)
        if x.size >= 4000:
            assert abs(x.std() * math.sqrt(fan) / TRUNC_SD - 1.0) < 0.06, jax.tree_util.keystr(path)
            checked += 1
    assert checked >= 5
    # The modules' own initialiser (used by agent.init) draws the same distribution:
    # test_layers.py::test_sonnet_init_statistics.


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="unknown action part 'speed'"):
        A.make_agent(dict(FULL_SPEC, speed=3))
    with pytest.raises(ValueError, match="grid_width must be 4"):
        A.make_agent(dict(FULL_SPEC, control=144, end=144))
    with pytest.raises(ValueError, match="grid_width\\^2"):
        A.make_agent(dict(FULL_SPEC, control=50, end=50))
    with pytest.raises(ValueError, match="'flag' must have 2"):
        A.make_agent(dict(FULL_SPEC, flag=3))
    with pytest.raises(ValueError, match="lacks 'end'"):
        A.make_agent({"control": 64, "flag": 2})
    with pytest.raises(ValueError, match="agent.lstm_size=72: must be a multiple of 16"):
        A.make_agent(FULL_SPEC, A.AgentConfig(lstm_size=72))
    with pytest.raises(ValueError, match="agent.num_res_blocks=-1: must be an int >= 0"):
        A.make_agent(FULL_SPEC, A.AgentConfig(num_res_blocks=-1))
    agent = A.make_agent(FULL_SPEC, SMALL)
    with pytest.raises(ValueError, match="canvas width must be 8"):
        A.init_params(agent, jax.random.key(0), (48, 48, 3))
    cond = A.make_agent(FULL_SPEC, dataclasses.replace(SMALL, conditional=True))
    obs = A.dummy_observation(agent, (CANVAS, CANVAS, 3), 1)  # no target
    with pytest.raises(ValueError, match="needs observation\\['target'\\]"):
        jax.eval_shape(
            functools.partial(cond.init, method=A.SpiralAgent.step),
            jax.random.key(0),
            obs,
            jnp.zeros((1,), jnp.int32),
            A.initial_state(cond.action_spec, cond.config, 1),
            jnp.zeros((1, 10)),
            jax.random.key(0),
        )


def test_torso_inputs_coordinates_and_masked_previous_action(small):
    """The first conv sees canvas, then x (varying along the width), then y; the
    previous action reaches the torso only through the parts its mask lets through."""
    agent, params, _, _ = small
    torso = A.Torso(agent.action_spec, agent.config)
    tp = params["params"]["torso"]
    n = 2
    canvas = jnp.asarray(
        np.random.default_rng(14).uniform(size=(n, CANVAS, CANVAS, 3)), jnp.float32
    )
    noise = jnp.zeros((n, 10))
    move = AS.action_masks(jnp.zeros((n,), jnp.int32), agent.action_spec)
    prev = AS.zero_action(agent.action_spec, (n,))

    @jax.jit
    def conv_out(kernel, prev, mask):
        p = {**tp, "conv": {"kernel": kernel, "bias": jnp.zeros_like(tp["conv"]["bias"])}}
        out, state = torso.apply(
            {"params": p},
            {"canvas": canvas, "action_mask": mask},
            prev,
            noise,
            capture_intermediates=True,
        )
        inter = state["intermediates"]
        # The conv's module adds the conditioning and applies the ReLU (in one op).
        cond = sum(inter[m]["__call__"][0] for m in ("prev_action_mlp", "noise_mlp") if m in inter)
        return inter["conv"]["__call__"][0], cond, out[0]

    lin = np.linspace(-1.0, 1.0, CANVAS)
    for channel, want in (
        (0, np.asarray(canvas[..., 0])),
        (3, np.broadcast_to(lin[None, None, :], (n, CANVAS, CANVAS))),
        (4, np.broadcast_to(lin[None, :, None], (n, CANVAS, CANVAS))),
    ):
        kernel = np.zeros(tp["conv"]["kernel"].shape, np.float32)
        kernel[2, 2, channel, 0] = 1.0  # the centre tap of a 5x5 kernel
        got, cond, _ = conv_out(jnp.asarray(kernel), prev, move)
        want = np.maximum(want + np.asarray(cond)[:, None, None, 0], 0.0)
        assert (want > 0).mean() > 0.1
        np.testing.assert_allclose(got[..., 0], want, atol=1e-6)

    kernel = tp["conv"]["kernel"]
    _, _, base = conv_out(kernel, prev, move)
    changed_size = dict(prev, size=jnp.full((n,), 2, jnp.int32))
    _, _, masked = conv_out(kernel, changed_size, move)  # 'size' does not count after a move
    np.testing.assert_array_equal(masked, base)
    paint = AS.action_masks(jnp.ones((n,), jnp.int32), agent.action_spec)
    _, _, paint_base = conv_out(kernel, prev, paint)
    _, _, paint_changed = conv_out(kernel, changed_size, paint)
    assert not np.allclose(paint_changed, paint_base)
    changed_end = dict(prev, end=jnp.full((n,), 9, jnp.int32))
    _, _, moved = conv_out(kernel, changed_end, move)  # 'end' counts after a move
    assert not np.allclose(moved, base)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("channels", 0, r"agent\.channels=0: must be a positive int"),
        ("lstm_size", 16.0, r"agent\.lstm_size=16\.0: must be a positive int"),
        ("torso_output", -4, r"agent\.torso_output=-4: must be a positive int"),
        ("embed_dim", True, r"agent\.embed_dim=True: must be a positive int"),
        ("num_res_blocks", -1, r"agent\.num_res_blocks=-1: must be an int >= 0"),
        ("noise_dim", 2.5, r"agent\.noise_dim=2\.5: must be an int >= 0"),
        ("decoder_skips", -1, r"agent\.decoder_skips=-1: must be an int >= 0"),
        ("lstm_size", 40, r"agent\.lstm_size=40: must be a multiple of 16"),
        ("dtype", "float16", r"agent\.dtype='float16'; allowed: \('float32', 'bfloat16'\)"),
        ("cond_hidden", (64, 0), r"agent\.cond_hidden=\(64, 0\): must be a tuple of positive"),
        ("noise_hidden", [8, -1], r"agent\.noise_hidden=\(8, -1\): must be a tuple of"),
        ("residual_hidden", 16, r"agent\.residual_hidden=16: must be a tuple of positive"),
    ],
)
def test_agent_config_raises_one_line_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        A.AgentConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_agent_config_from_json_lists_and_episode_noise():
    # A config.json gives lists: they become tuples (the agent's config is hashed as a
    # static attribute of the Flax module).
    config = A.AgentConfig(cond_hidden=[32, 16], noise_hidden=[32, 16],
                           residual_hidden=[16, 32])
    assert (config.cond_hidden, config.noise_hidden, config.residual_hidden) == (
        (32, 16), (32, 16), (16, 32))
    assert all(isinstance(getattr(config, name), tuple)
               for name in ("cond_hidden", "noise_hidden", "residual_hidden"))
    hash(config)
    # The defaults are SPIRAL's network.
    paper = A.AgentConfig()
    assert (paper.channels, paper.num_res_blocks, paper.lstm_size, paper.torso_output) == (
        32, 8, 256, 256)
    assert (paper.cond_hidden, paper.noise_hidden, paper.residual_hidden) == (
        (64, 32), (64, 32), (16, 32))
    assert (paper.embed_dim, paper.noise_dim, paper.conditional, paper.dtype) == (
        16, 10, False, "float32")
    # Conditional agents get no noise; unconditional ones noise_dim (0 = none).
    assert paper.episode_noise_dim == 10
    assert dataclasses.replace(paper, conditional=True).episode_noise_dim == 0
    assert dataclasses.replace(paper, noise_dim=0).episode_noise_dim == 0


def test_conditional_agent_has_no_noise_mlp():
    """A conditional agent sees its target, not noise: no noise MLP, and the noise
    argument (None in rollouts) does not matter."""
    cond = A.make_agent(FULL_SPEC, dataclasses.replace(SMALL, conditional=True))
    obs = A.dummy_observation(cond, (CANVAS, CANVAS, 1), 1)
    args = (obs, jnp.zeros((1,), jnp.int32), A.initial_state(cond.action_spec, cond.config, 1))
    params = jax.eval_shape(functools.partial(cond.init, method=A.SpiralAgent.step),
                            jax.random.key(0), *args, None, jax.random.key(0))
    assert "noise_mlp" not in params["params"]["torso"]
    assert "target" in obs
    plain = A.make_agent(FULL_SPEC, SMALL)
    plain_obs = A.dummy_observation(plain, (CANVAS, CANVAS, 1), 1)
    plain_params = jax.eval_shape(
        functools.partial(plain.init, method=A.SpiralAgent.step), jax.random.key(0),
        plain_obs, *args[1:], jnp.zeros((1, SMALL.noise_dim)), jax.random.key(0))
    assert "noise_mlp" in plain_params["params"]["torso"]
    assert "target" not in plain_obs
