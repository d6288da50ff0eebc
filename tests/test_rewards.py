"""Tests of the reward functions (spiral_jax.rewards) against float64 numpy references."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import rewards as RW
from spiral_jax.types import FIRST, LAST, MID

T, B = 6, 3
rng = np.random.default_rng(0)


def _whole_episode_is_last() -> np.ndarray:
    is_last = np.zeros((T, B), bool)
    is_last[-1] = True
    return is_last


def _continuing_unroll(lengths=(3, 4, 2), t=12):
    """Step types of continuing unrolls: each env restarts after LAST with a dummy step.

    Env b runs episodes of ``lengths[b]`` decisions: FIRST, MID..., LAST, FIRST, ...
    Returns (step_type [t + 1, B] of o_0 .. o_t, next_step_type [t, B], valid [t, B]).
    """
    cols = []
    for n in lengths:
        cycle = [FIRST] + [MID] * (n - 1) + [LAST]
        cols.append((cycle * (t // len(cycle) + 2))[: t + 1])
    st = np.array(cols, np.int32).T
    return st, st[1:], (st[:-1] != LAST).astype(np.float32)


def test_terminal_reward_whole_episode_and_continuing():
    scores = rng.normal(size=B).astype(np.float32)
    is_last = jnp.asarray(_whole_episode_is_last())
    got = np.asarray(RW.terminal_d_reward(jnp.asarray(scores), is_last))
    want = np.zeros((T, B))
    want[-1] = scores
    np.testing.assert_array_equal(got, want)

    st, next_st, _ = _continuing_unroll()
    step_scores = rng.normal(size=next_st.shape).astype(np.float32)
    is_last = next_st == LAST
    got = np.asarray(RW.terminal_d_reward(jnp.asarray(step_scores), jnp.asarray(is_last)))
    np.testing.assert_array_equal(got, np.where(is_last, step_scores, 0.0))
    assert np.count_nonzero(got) == np.count_nonzero(is_last) > B  # several episode ends


def test_per_step_reward_telescopes_over_a_whole_episode():
    s = rng.normal(size=(T + 1, B))  # s_0 = D(blank), s_T = D(final)
    r = np.asarray(RW.per_step_d_reward(jnp.asarray(s, jnp.float32)))
    assert r.shape == (T, B) and r.dtype == np.float32
    np.testing.assert_allclose(r, np.diff(s, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.sum(0), s[-1] - s[0], rtol=1e-5, atol=1e-5)


def test_per_step_reward_telescopes_within_each_episode_of_a_continuing_unroll():
    st, _, valid = _continuing_unroll()
    tt = valid.shape[0]
    s = rng.normal(size=(tt + 1, B))
    r = np.asarray(RW.per_step_d_reward(jnp.asarray(s, jnp.float32), jnp.asarray(valid)))
    # Python reference: the rewards of one episode sum to s(its LAST observation) -
    # s(its FIRST observation); the dummy steps get 0.
    episodes = _episodes(st)
    for b, start, t in episodes:
        assert r[start:t, b].sum() == pytest.approx(s[t, b] - s[start, b], abs=1e-5)
        if t < tt:
            assert r[t, b] == 0.0  # the dummy action at LAST
    assert len(episodes) >= 2 * B


def _episodes(st: np.ndarray) -> list[tuple[int, int, int]]:
    """(env b, FIRST index, LAST index) of every whole episode in step types [T + 1, B]."""
    out = []
    for b in range(st.shape[1]):
        start = None
        for t in range(st.shape[0]):
            if st[t, b] == FIRST:
                start = t
            if st[t, b] == LAST and start is not None:
                out.append((b, start, t))
                start = None
    return out


def _discounted_return(r: np.ndarray, gamma: float) -> np.ndarray:
    """sum_t gamma^t r_t over the time axis 0 of [T, B] rewards, in float64."""
    return np.einsum("t,tb->b", gamma ** np.arange(len(r), dtype=np.float64),
                     r.astype(np.float64))


GAMMAS = (1.0, 0.99, 0.9, 0.5, 0.0)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_per_step_d_reward_is_potential_based(gamma):
    """Ng et al. (1999): r_t = gamma s_{t+1} - s_t, so the discounted return of a whole
    episode is gamma^T s(final) - s(blank), whatever the path."""
    s = np.random.default_rng(10).normal(size=(T + 1, B))
    r = np.asarray(RW.per_step_d_reward(jnp.asarray(s, jnp.float32), discount=gamma))
    assert r.shape == (T, B) and r.dtype == np.float32
    s32 = s.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(r, gamma * s32[1:] - s32[:-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_discounted_return(r, gamma), gamma**T * s32[-1] - s32[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pools", [(1,), (1, 2)])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_l2_per_step_reward_is_potential_based(gamma, pools):
    r64 = np.random.default_rng(11)
    canvases = r64.uniform(size=(T + 1, B, 8, 8, 2)).astype(np.float32)
    canvases[0] = 1.0  # blank start
    target = r64.uniform(size=(B, 8, 8, 2)).astype(np.float32)
    phi = -np.mean([_pooled_mse_numpy(canvases.astype(np.float64),
                                      np.broadcast_to(target, canvases.shape), f)
                    for f in pools], axis=0)  # [T + 1, B], the potential in float64
    r = np.asarray(RW.l2_per_step_reward(jnp.asarray(canvases), jnp.asarray(target),
                                         pools=pools, discount=gamma))
    assert r.shape == (T, B) and r.dtype == np.float32
    np.testing.assert_allclose(r, gamma * phi[1:] - phi[:-1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_discounted_return(r, gamma), gamma**T * phi[-1] - phi[0],
                               rtol=1e-4, atol=1e-6)


def test_same_final_canvas_by_different_paths_gets_the_same_discounted_return():
    """Three episodes end on the same canvas: column 0 paints the target in its first
    step, column 1 in its last, column 2 after a random detour. Potential-based rewards
    give all three the same discounted return; the gamma-free difference would pay
    column 0 more than column 1 for painting early."""
    gamma = 0.9
    target = np.ones((3, 4, 4, 1), np.float32)
    target[:, 1:3, 1:3] = 0.0
    canvases = np.ones((T + 1, 3, 4, 4, 1), np.float32)  # all start blank
    canvases[1:, 0] = target[0]
    canvases[-1, 1] = target[1]
    canvases[1:-1, 2] = np.random.default_rng(12).uniform(size=(T - 1, 4, 4, 1))
    canvases[-1, 2] = target[2]
    c, t = jnp.asarray(canvases), jnp.asarray(target)

    def d_score(x):  # a stand-in critic: the mean ink, any leading axes
        return 1.0 - jnp.mean(x, axis=(-3, -2, -1))

    for pools in ((1,), (1, 2)):
        ret = _discounted_return(
            np.asarray(RW.l2_per_step_reward(c, t, pools=pools, discount=gamma)), gamma)
        # gamma^T * 0 (the final canvas is the target) - l2_score(blank).
        np.testing.assert_allclose(ret, -float(RW.l2_score(c[0, 0], t[0], pools)),
                                   rtol=1e-6, atol=1e-6)
    ret = _discounted_return(np.asarray(RW.per_step_d_reward(d_score(c), discount=gamma)),
                             gamma)
    np.testing.assert_allclose(ret, gamma**T * 0.25 - 0.0, rtol=1e-6, atol=1e-6)
    # The old gamma-free difference, discounted at gamma, tells the paths apart.
    old = _discounted_return(np.asarray(RW.per_step_d_reward(d_score(c))), gamma)
    np.testing.assert_allclose(old[:2], [0.25, gamma ** (T - 1) * 0.25], rtol=1e-6)


def test_per_step_rewards_with_discount_one_are_the_plain_telescoping_difference():
    s = np.random.default_rng(13).normal(size=(T + 1, B)).astype(np.float32)
    r = np.asarray(RW.per_step_d_reward(jnp.asarray(s), discount=1.0))
    np.testing.assert_array_equal(r, s[1:] - s[:-1])  # bit for bit: 1 * s is exact
    np.testing.assert_array_equal(r, np.asarray(RW.per_step_d_reward(jnp.asarray(s))))
    np.testing.assert_allclose(r.sum(0), s[-1] - s[0], rtol=1e-5, atol=1e-5)
    canvases = jnp.asarray(np.random.default_rng(14).uniform(size=(T + 1, B, 4, 4, 1)),
                           jnp.float32)
    target = jnp.asarray(np.random.default_rng(15).uniform(size=(B, 4, 4, 1)), jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(RW.l2_per_step_reward(canvases, target, discount=1.0)),
        np.asarray(RW.l2_per_step_reward(canvases, target)))


def test_discounted_per_step_reward_is_potential_based_within_each_episode_of_an_unroll():
    gamma = 0.9
    st, _, valid = _continuing_unroll()
    tt = valid.shape[0]
    s = np.random.default_rng(16).normal(size=(tt + 1, B)).astype(np.float32)
    r = np.asarray(RW.per_step_d_reward(jnp.asarray(s), jnp.asarray(valid), discount=gamma))
    episodes = _episodes(st)
    for b, start, t in episodes:
        ret = _discounted_return(r[start:t, b:b + 1], gamma)[0]
        assert ret == pytest.approx(gamma ** (t - start) * s[t, b] - s[start, b], abs=1e-5)
        if t < tt:
            assert r[t, b] == 0.0  # the dummy action at LAST
    assert len(episodes) >= 2 * B


def test_l2_rewards_match_numpy_and_telescope():
    shape = (4, 5, 5, 3)[1:]
    target = rng.uniform(size=(B,) + shape)
    canvases = rng.uniform(size=(T + 1, B) + shape)
    canvases[0] = 1.0  # blank start
    sq = ((canvases - target[None]) ** 2).reshape(T + 1, B, -1).mean(-1)
    got = np.asarray(RW.l2_reward(jnp.asarray(canvases[-1], jnp.float32),
                                  jnp.asarray(target, jnp.float32),
                                  jnp.asarray(_whole_episode_is_last())))
    want = np.zeros((T, B))
    want[-1] = -sq[-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    per = np.asarray(RW.l2_per_step_reward(jnp.asarray(canvases, jnp.float32),
                                           jnp.asarray(target, jnp.float32)))
    np.testing.assert_allclose(per, -np.diff(sq, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(per.sum(0), sq[0] - sq[-1], rtol=1e-4, atol=1e-6)
    # Painting the target exactly is the best possible final reward: 0.
    perfect = RW.l2_reward(jnp.asarray(target, jnp.float32), jnp.asarray(target, jnp.float32),
                           jnp.asarray(_whole_episode_is_last()))
    assert float(jnp.max(jnp.abs(perfect))) == 0.0


def _pooled_mse_numpy(a: np.ndarray, b: np.ndarray, f: int) -> np.ndarray:
    """Mean squared difference of f x f block means, by explicit loops (float64)."""
    lead, (h, w, c) = a.shape[:-3], a.shape[-3:]
    a2, b2 = a.reshape((-1, h, w, c)), b.reshape((-1, h, w, c))
    out = np.zeros(len(a2))
    for n in range(len(a2)):
        acc = 0.0
        for i in range(0, h, f):
            for j in range(0, w, f):
                for k in range(c):
                    d = a2[n, i:i + f, j:j + f, k].mean() - b2[n, i:i + f, j:j + f, k].mean()
                    acc += d * d
        out[n] = acc / ((h // f) * (w // f) * c)
    return out.reshape(lead)


@pytest.mark.parametrize("pools", [(1,), (2,), (1, 2, 4), (4, 8)])
def test_pooled_l2_matches_numpy_block_means(pools):
    canvases = rng.uniform(size=(T + 1, B, 8, 8, 2))
    target = rng.uniform(size=(B, 8, 8, 2))
    want = np.mean([_pooled_mse_numpy(canvases, np.broadcast_to(target, canvases.shape), f)
                    for f in pools], axis=0)  # [T + 1, B]
    c32, t32 = jnp.asarray(canvases, jnp.float32), jnp.asarray(target, jnp.float32)
    np.testing.assert_allclose(np.asarray(RW.l2_score(c32, t32[None], pools)), -want,
                               rtol=1e-5, atol=1e-7)
    per = np.asarray(RW.l2_per_step_reward(c32, t32, pools=pools))
    np.testing.assert_allclose(per, want[:-1] - want[1:], rtol=1e-4, atol=1e-6)
    final = np.asarray(RW.l2_reward(c32[-1], t32, jnp.asarray(_whole_episode_is_last()), pools))
    np.testing.assert_allclose(final[-1], -want[-1], rtol=1e-5, atol=1e-7)
    assert np.all(final[:-1] == 0)


def test_pooling_credits_a_stroke_next_to_the_ink():
    # Target: one inked column; the stroke lands one pixel beside it. At full resolution
    # that only adds error; pooled over 4x4 blocks it gets closer to the target.
    target = np.ones((1, 8, 8, 1))
    target[0, :, 2] = 0.0
    canvas = np.ones((2, 1, 8, 8, 1))
    canvas[1, 0, :, 1] = 0.0
    c, t = jnp.asarray(canvas, jnp.float32), jnp.asarray(target, jnp.float32)
    assert float(RW.l2_per_step_reward(c, t, pools=(1,))[0, 0]) < 0
    assert float(RW.l2_per_step_reward(c, t, pools=(4,))[0, 0]) > 0


@pytest.mark.parametrize("pools, message", [((), "at least one"), ((0,), "positive"),
                                            ((3,), "does not divide"), ((1.5,), "positive")])
def test_bad_pools_are_rejected(pools, message):
    with pytest.raises(ValueError, match=message):
        RW.check_pools(pools, 8)


def test_stroke_penalty_every_paint_step_and_new_strokes_only():
    flag = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], np.int32)
    valid = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]], np.float32)
    got = np.asarray(RW.stroke_penalty(jnp.asarray(flag), 0.05, jnp.asarray(valid)))
    np.testing.assert_allclose(got, -0.05 * flag * valid, rtol=1e-6)
    # Pen state before each action: first row is an episode start (pen up), then the
    # previous flag (no resets in this example).
    prev = np.vstack([np.zeros((1, 3), np.int32), flag[:-1]])
    got = np.asarray(RW.stroke_penalty(jnp.asarray(flag), 0.05, prev_flag=jnp.asarray(prev)))
    new_strokes = np.zeros_like(flag)
    for b in range(3):
        down = False
        for t in range(4):
            new_strokes[t, b] = flag[t, b] == 1 and not down
            down = flag[t, b] == 1
    np.testing.assert_allclose(got, -0.05 * new_strokes, rtol=1e-6)
    assert new_strokes.sum() < flag.sum()  # the example does continue strokes


def test_empty_canvas_penalty():
    canvases = np.ones((B, 4, 4, 1), np.float32)
    canvases[1, 2, 3, 0] = 254 / 255  # one pixel one 8-bit level off white: painted
    canvases[2] = np.nextafter(np.float32(1.0), np.float32(0.0))  # an ulp off: still empty
    got = np.asarray(RW.empty_canvas_penalty(jnp.asarray(canvases),
                                             jnp.asarray(_whole_episode_is_last()), 0.5))
    want = np.zeros((T, B))
    want[-1] = [-0.5, 0.0, -0.5]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(RW.is_empty(jnp.asarray(canvases))),
                                  [True, False, True])


def test_all_rewards_jit():
    st, next_st, valid = _continuing_unroll()
    tt = valid.shape[0]
    canv = jnp.asarray(rng.uniform(size=(tt + 1, B, 4, 4, 1)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(B, 4, 4, 1)), jnp.float32)
    flag = jnp.asarray(rng.integers(0, 2, size=(tt, B)), jnp.int32)

    @jax.jit
    def total(canv, target, flag, weight):
        is_last = jnp.asarray(next_st) == LAST
        return (RW.l2_reward(canv[1:], target, is_last)
                + RW.l2_per_step_reward(canv, target, jnp.asarray(valid))
                + RW.stroke_penalty(flag, weight, jnp.asarray(valid))
                + RW.empty_canvas_penalty(canv[1:], is_last, weight))

    out = total(canv, target, flag, jnp.float32(0.1))  # a traced weight is allowed
    assert out.shape == (tt, B) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_input():
    is_last = jnp.asarray(_whole_episode_is_last())
    with pytest.raises(ValueError, match="scores"):
        RW.terminal_d_reward(jnp.zeros((B + 1,)), is_last)
    with pytest.raises(ValueError, match=r"\[T, B\]"):
        RW.terminal_d_reward(jnp.zeros((B,)), is_last[0])
    with pytest.raises(ValueError, match="T \\+ 1 >= 2"):
        RW.per_step_d_reward(jnp.zeros((1, B)))
    with pytest.raises(ValueError, match="valid"):
        RW.per_step_d_reward(jnp.zeros((T + 1, B)), jnp.ones((T + 1, B)))
    with pytest.raises(ValueError, match=r"discount must be in \[0, 1\], got 1\.5"):
        RW.per_step_d_reward(jnp.zeros((T + 1, B)), discount=1.5)
    with pytest.raises(ValueError, match="same"):
        RW.l2_score(jnp.zeros((B, 4, 4, 1)), jnp.zeros((B, 4, 4, 3)))
    with pytest.raises(ValueError, match="target"):
        RW.l2_reward(jnp.zeros((B, 4, 4, 1)), jnp.zeros((B + 1, 4, 4, 1)), is_last)
    with pytest.raises(ValueError, match=">= 0"):
        RW.stroke_penalty(jnp.zeros((T, B), jnp.int32), -0.1)
    with pytest.raises(ValueError, match=">= 0"):
        RW.empty_canvas_penalty(jnp.ones((B, 4, 4, 1)), is_last, -1.0)
    with pytest.raises(ValueError, match="prev_flag"):
        RW.stroke_penalty(jnp.zeros((T, B), jnp.int32), 0.1, prev_flag=jnp.zeros((T, B + 1)))
    with pytest.raises(ValueError, match="terminal_d"):
        RW.check_reward("wasserstein")
    RW.check_reward("per_step_d")


def test_prev_flag_from_the_environments_observation_masks():
    """The module docstring's recipe: the observation's mask of a paint-only part is the
    pen state before each action (move mask at FIRST), so new strokes are found from a
    trajectory alone."""
    from spiral_jax.envs.libmypaint import LibMyPaint

    env = LibMyPaint(episode_length=7, canvas_width=16, grid_width=4, brush_sizes=(1,),
                     use_color=False, use_pressure=False)
    flags = [1, 1, 0, 1, 0, 0]
    step = jax.jit(env.step)
    state, ts = jax.jit(env.reset)(jax.random.key(0))
    prev = []
    for f in flags:
        prev.append(float(ts.observation["action_mask"]["control"]))
        action = {name: jnp.int32(0) for name in env.action_spec()}
        action.update(flag=jnp.int32(f), end=jnp.int32(5), control=jnp.int32(2))
        state, ts = step(state, action)
    assert int(ts.step_type) == LAST
    got = RW.stroke_penalty(jnp.asarray(flags)[:, None], 1.0,
                            prev_flag=jnp.asarray(prev)[:, None])
    np.testing.assert_array_equal(np.asarray(got)[:, 0], [-1, 0, 0, -1, 0, 0])


def test_standardize_scores_matches_numpy_and_ignores_offset_and_scale():
    s = np.random.default_rng(3).normal(2.0, 5.0, size=(10, 8))
    ref = (s - s.mean()) / np.sqrt(s.var() + 1e-6)
    np.testing.assert_allclose(RW.standardize_scores(jnp.asarray(s)), ref, atol=1e-5)
    # A drifting critic offset and a growing scale leave the rewards as they are.
    np.testing.assert_allclose(
        RW.standardize_scores(jnp.asarray(7.0 * s - 40.0)), ref, atol=1e-4
    )
    np.testing.assert_array_equal(RW.standardize_scores(jnp.full((4,), 3.0)), np.zeros(4))


def test_standardize_scores_over_a_mapped_axis_uses_the_whole_batch():
    s = np.random.default_rng(4).normal(size=(4, 6)).astype(np.float32)
    split = jnp.asarray(s).reshape(4, 2, 3).transpose(1, 0, 2)  # 2 "devices" of [4, 3]
    out = jax.vmap(lambda x: RW.standardize_scores(x, axis_name="d"), axis_name="d")(split)
    ref = (s - s.mean()) / np.sqrt(s.var() + 1e-6)
    np.testing.assert_allclose(out.transpose(1, 0, 2).reshape(4, 6), ref, atol=1e-5)


# ----------------------------------------------------------------------------------------
# RewardConfig and episode_rewards.


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kind", "wasserstein",
         r"reward.kind='wasserstein': unknown reward 'wasserstein'; allowed: \('terminal_d'"),
        ("discount", 1.5, r"reward\.discount=1\.5: must be in \[0, 1\]"),
        ("discount", -0.1, r"reward\.discount=-0\.1: must be in \[0, 1\]"),
        ("scale", 0.0, r"reward\.scale=0\.0: must be > 0"),
        ("stroke_penalty", -0.1, r"reward\.stroke_penalty=-0\.1: must be >= 0"),
        ("empty_penalty", -1, r"reward\.empty_penalty=-1: must be >= 0"),
        ("l2_pools", [], r"pools must name at least one pooling factor"),
        ("l2_pools", [1, 0],
         r"reward.l2_pools=\[1, 0\]: pooling factors must be positive ints, got 0 in \(1, 0\)"),
    ],
)
def test_reward_config_raises_one_line_naming_the_bad_value(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        RW.RewardConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_reward_config_rejects_an_unknown_gan_reward():
    with pytest.raises(ValueError, match=r"gan_reward.*'sigmoid'"):
        RW.RewardConfig(gan_reward="sigmoid")


def test_reward_config_from_json_lists():
    # A config.json gives lists (and a bare int is one factor): they become tuples.
    assert RW.RewardConfig(l2_pools=[1, 2, 4]).l2_pools == (1, 2, 4)
    assert RW.RewardConfig(l2_pools=2).l2_pools == (2,)
    cfg = RW.RewardConfig(kind="l2", l2_pools=[1, 2])
    assert cfg == RW.RewardConfig(kind="l2", l2_pools=(1, 2))
    hash(cfg)
    assert cfg.needs_target and RW.RewardConfig(kind="l2_per_step").needs_target
    assert not RW.RewardConfig().needs_target
    assert RW.RewardConfig().kind == "terminal_d" and RW.RewardConfig().discount == 1.0


def _fake_trajectory():
    """A whole-episode `rollout.Trajectory`'s fields that `episode_rewards` reads."""
    r = np.random.default_rng(7)
    canvases = np.ones((T + 1, B, 4, 4, 1), np.float32)  # c_0 blank .. c_T final
    canvases[1:] = r.uniform(size=(T, B, 4, 4, 1))
    canvases[-1, 0] = 1.0  # episode 0 ends on an empty canvas
    flag = r.integers(0, 2, size=(T, B)).astype(np.int32)
    prev_flag = np.vstack([np.zeros((1, B), np.int32), flag[:-1]]).astype(np.float32)
    next_step_type = np.full((T, B), MID, np.int32)
    next_step_type[-1] = LAST
    traj = types.SimpleNamespace(
        observation={"canvas": jnp.asarray(canvases[:-1]),
                     "action_mask": {"control": jnp.asarray(prev_flag)}},
        next_canvas=jnp.asarray(canvases[1:]),
        final_canvas=jnp.asarray(canvases[-1]),
        next_step_type=jnp.asarray(next_step_type),
        action={"flag": jnp.asarray(flag)},
    )
    return traj, canvases, flag, prev_flag


@pytest.mark.parametrize("kind", RW.REWARDS)
def test_episode_rewards_pays_what_the_config_says(kind):
    traj, canvases, flag, prev_flag = _fake_trajectory()
    target = rng.uniform(size=(B, 4, 4, 1)).astype(np.float32)
    is_last = _whole_episode_is_last()

    def d_score(c):  # a stand-in critic: the mean ink, any leading axes
        return 1.0 - jnp.mean(c, axis=(-3, -2, -1))

    cfg = RW.RewardConfig(kind=kind, scale=2.0, stroke_penalty=0.1, empty_penalty=0.5,
                          l2_pools=(1, 2))
    got = np.asarray(RW.episode_rewards(cfg, traj, jnp.asarray(target), d_score))
    ink = 1.0 - canvases.reshape(T + 1, B, -1).astype(np.float64).mean(-1)  # [T + 1, B]
    l2 = np.mean([_pooled_mse_numpy(canvases, np.broadcast_to(target, canvases.shape), f)
                  for f in (1, 2)], axis=0)
    base = {
        "terminal_d": np.where(is_last, ink[-1], 0.0),
        "per_step_d": np.diff(ink, axis=0),
        "l2": np.where(is_last, -l2[-1], 0.0),
        "l2_per_step": l2[:-1] - l2[1:],
    }[kind]
    new_strokes = (flag == 1) & (prev_flag == 0)
    empty = np.where(is_last, 1.0 - np.any(canvases[-1] != 1.0, axis=(1, 2, 3)), 0.0)
    want = 2.0 * base - 0.1 * new_strokes - 0.5 * empty
    assert empty[-1, 0] == 1.0 and new_strokes.any()  # both penalties are exercised
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # No penalties, scale 1: the bare reward.
    plain = RW.episode_rewards(RW.RewardConfig(kind=kind, l2_pools=(1, 2)), traj,
                               jnp.asarray(target), d_score)
    np.testing.assert_allclose(np.asarray(plain), base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["per_step_d", "l2_per_step"])
def test_episode_rewards_per_step_kinds_use_the_configs_discount(kind):
    """`episode_rewards` pays gamma * Phi(c_{t+1}) - Phi(c_t) with the return's own
    gamma (`RewardConfig.discount`), so an episode's discounted return is
    gamma^T Phi(final) - Phi(blank)."""
    gamma = 0.9
    traj, canvases, _, _ = _fake_trajectory()
    target = np.random.default_rng(17).uniform(size=(B, 4, 4, 1)).astype(np.float32)

    def d_score(c):  # a stand-in critic: the mean ink, any leading axes
        return 1.0 - jnp.mean(c, axis=(-3, -2, -1))

    cfg = RW.RewardConfig(kind=kind, discount=gamma, l2_pools=(1, 2))
    got = np.asarray(RW.episode_rewards(cfg, traj, jnp.asarray(target), d_score))
    c64 = canvases.astype(np.float64)
    if kind == "per_step_d":
        phi = 1.0 - c64.reshape(T + 1, B, -1).mean(-1)
    else:
        phi = -np.mean([_pooled_mse_numpy(c64, np.broadcast_to(target, c64.shape), f)
                        for f in (1, 2)], axis=0)
    np.testing.assert_allclose(got, gamma * phi[1:] - phi[:-1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_discounted_return(got, gamma), gamma**T * phi[-1] - phi[0],
                               rtol=1e-4, atol=1e-6)
    # Not the gamma-free difference that the default discount of 1 gives.
    plain = RW.episode_rewards(RW.RewardConfig(kind=kind, l2_pools=(1, 2)), traj,
                               jnp.asarray(target), d_score)
    assert not np.allclose(got, np.asarray(plain), rtol=1e-3, atol=1e-4)
