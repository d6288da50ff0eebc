"""Tests for spiral_jax.vtrace against a float64 brute force of IMPALA's eq. (1)."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import vtrace

TS = (1, 2, 5, 50)
BATCH_SHAPES = ((), (3,), (2, 4))
THRESHOLDS = ((1.0, 1.0), (3.7, 2.2), (None, None))
LAMBDAS = (1.0, 0.9, 0.0)
MAX_REL_ERR = 1e-4


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest |got - ref| relative to the size of ref, elementwise with a floor.

    The floor (1e-3 of the largest |ref|) keeps entries that cancel to almost exactly 0
    from dividing float32 rounding of their large inputs by a tiny number.
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = np.maximum(np.abs(ref), 1e-3 * max(np.max(np.abs(ref)), 1e-30))
    return float(np.max(np.abs(got - ref) / scale))


def _brute_force(log_rhos, discounts, rewards, values, bootstrap, clip_rho, clip_pg_rho, lam):
    """V-trace in float64 straight from the paper's explicit sum, per-step discounts.

    v_s = V(x_s) + sum_{t=s}^{T-1} (prod_{i=s}^{t-1} gamma_i c_i) delta_t V
    A_s = rho_pg_s (r_s + gamma_s (lam v_{s+1} + (1 - lam) V(x_{s+1})) - V(x_s))
    """
    lr, g, r, v, b = (np.asarray(x, np.float64) for x in (
        log_rhos, discounts, rewards, values, bootstrap))
    n = lr.shape[0]
    rho = np.exp(lr)
    rho_bar = rho if clip_rho is None else np.minimum(clip_rho, rho)
    rho_pg = rho if clip_pg_rho is None else np.minimum(clip_pg_rho, rho)
    c = lam * np.minimum(1.0, rho)
    v_all = np.concatenate([v, b[None]], axis=0)  # V(x_0), ..., V(x_T)
    delta = [rho_bar[t] * (r[t] + g[t] * v_all[t + 1] - v_all[t]) for t in range(n)]
    vs = np.zeros_like(v)
    for s in range(n):
        vs[s] = v_all[s]
        for t in range(s, n):
            weight = np.prod(g[s:t] * c[s:t], axis=0)  # empty product = 1 at t = s
            vs[s] = vs[s] + weight * delta[t]
    vs_all = np.concatenate([vs, b[None]], axis=0)
    pg = np.stack([
        rho_pg[s] * (r[s] + g[s] * (lam * vs_all[s + 1] + (1 - lam) * v_all[s + 1]) - v_all[s])
        for s in range(n)
    ])
    return vs, pg


def _random_inputs(seed: int, t: int, batch_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """float32 inputs with big log-ratios (so clipping matters) and discounts that hit 0."""
    rng = np.random.default_rng(seed)
    shape = (t, *batch_shape)
    discounts = rng.uniform(0.5, 1.0, shape)
    discounts[rng.uniform(size=shape) < 0.15] = 0.0
    if t >= 3:
        discounts[t // 2] = 0.0  # Every batch entry has an episode end mid-sequence.
    return {
        "log_rhos": rng.normal(0.0, 2.0, shape).astype(np.float32),
        "discounts": discounts.astype(np.float32),
        "rewards": rng.normal(0.0, 1.0, shape).astype(np.float32),
        "values": rng.normal(0.0, 1.0, shape).astype(np.float32),
        "bootstrap_value": rng.normal(0.0, 1.0, batch_shape).astype(np.float32),
    }


def _call(inputs, clip_rho, clip_pg_rho, lam):
    return vtrace.from_importance_weights(
        **inputs, clip_rho_threshold=clip_rho, clip_pg_rho_threshold=clip_pg_rho, lambda_=lam
    )


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
@pytest.mark.parametrize("thresholds", THRESHOLDS)
@pytest.mark.parametrize("lam", LAMBDAS)
def test_matches_float64_brute_force(t, batch_shape, thresholds, lam):
    inputs = _random_inputs(seed=t * 100 + len(batch_shape), t=t, batch_shape=batch_shape)
    out = _call(inputs, *thresholds, lam)
    ref_vs, ref_pg = _brute_force(*inputs.values(), *thresholds, lam)
    assert out.vs.shape == out.pg_advantages.shape == (t, *batch_shape)
    assert out.vs.dtype == out.pg_advantages.dtype == jnp.float32
    assert _relative_error(out.vs, ref_vs) <= MAX_REL_ERR
    assert _relative_error(out.pg_advantages, ref_pg) <= MAX_REL_ERR


def test_clipping_changes_the_result():
    """The random inputs are far enough off-policy that each threshold matters."""
    inputs = _random_inputs(seed=7, t=20, batch_shape=(3,))
    results = [_call(inputs, *th, 1.0) for th in THRESHOLDS]
    for a, b in itertools.combinations(results, 2):
        assert np.max(np.abs(a.vs - b.vs)) > 1e-2
        assert np.max(np.abs(a.pg_advantages - b.pg_advantages)) > 1e-2


def test_on_policy_is_the_bootstrapped_discounted_return():
    """rho = 1, lambda = 1: v_s is the n-step return sum_t (prod_{i<t} gamma_i) r_t + ..."""
    inputs = _random_inputs(seed=3, t=12, batch_shape=(4,))
    inputs["log_rhos"] = np.zeros_like(inputs["log_rhos"])
    out = _call(inputs, 1.0, 1.0, 1.0)
    g = inputs["discounts"].astype(np.float64)
    r = inputs["rewards"].astype(np.float64)
    ret = inputs["bootstrap_value"].astype(np.float64)
    expected = np.zeros_like(r)
    for s in reversed(range(r.shape[0])):  # The plain Monte-Carlo return, no values at all.
        ret = r[s] + g[s] * ret
        expected[s] = ret
    assert _relative_error(out.vs, expected) <= MAX_REL_ERR
    advantages = expected - inputs["values"]
    assert _relative_error(out.pg_advantages, advantages) <= MAX_REL_ERR


def test_lambda_zero_is_one_step_td():
    """lambda = 0 cuts every trace: v_s = V(x_s) + rho_bar_s delta_s."""
    inputs = _random_inputs(seed=4, t=6, batch_shape=(5,))
    out = _call(inputs, 3.7, 2.2, 0.0)
    v_tp1 = np.concatenate([inputs["values"][1:], inputs["bootstrap_value"][None]]).astype(
        np.float64)
    rho = np.exp(inputs["log_rhos"].astype(np.float64))
    td = inputs["rewards"] + inputs["discounts"] * v_tp1 - inputs["values"]
    assert _relative_error(out.vs, inputs["values"] + np.minimum(3.7, rho) * td) <= MAX_REL_ERR
    assert _relative_error(out.pg_advantages, np.minimum(2.2, rho) * td) <= MAX_REL_ERR


def test_jit_matches_eager():
    inputs = _random_inputs(seed=5, t=9, batch_shape=(2, 3))
    eager = _call(inputs, 3.7, 2.2, 0.9)
    jitted = jax.jit(functools.partial(_call, clip_rho=3.7, clip_pg_rho=2.2, lam=0.9))(inputs)
    np.testing.assert_allclose(jitted.vs, eager.vs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jitted.pg_advantages, eager.pg_advantages, rtol=1e-6, atol=1e-6)


def test_traced_hyperparameters_match_static_ones():
    inputs = _random_inputs(seed=6, t=7, batch_shape=(3,))
    static = _call(inputs, 3.7, 2.2, 0.9)
    traced = jax.jit(_call)(inputs, jnp.float32(3.7), jnp.float32(2.2), jnp.float32(0.9))
    np.testing.assert_allclose(traced.vs, static.vs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(traced.pg_advantages, static.pg_advantages, rtol=1e-6, atol=1e-6)


def test_vmap_over_independent_problems_matches_a_loop():
    k = 4
    per_problem = [_random_inputs(seed=10 + i, t=8, batch_shape=(3,)) for i in range(k)]
    stacked = {name: np.stack([p[name] for p in per_problem]) for name in per_problem[0]}
    batched = jax.vmap(lambda x: _call(x, 3.7, 2.2, 0.9))(stacked)
    for i, p in enumerate(per_problem):
        single = _call(p, 3.7, 2.2, 0.9)
        np.testing.assert_allclose(batched.vs[i], single.vs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            batched.pg_advantages[i], single.pg_advantages, rtol=1e-6, atol=1e-6)


def test_vmap_over_the_batch_axis_matches_the_batched_call():
    inputs = _random_inputs(seed=11, t=8, batch_shape=(5,))
    in_axes = {name: (0 if name == "bootstrap_value" else 1) for name in inputs}
    mapped = jax.vmap(lambda x: _call(x, 1.0, 1.0, 1.0), in_axes=(in_axes,), out_axes=1)(inputs)
    direct = _call(inputs, 1.0, 1.0, 1.0)
    np.testing.assert_allclose(mapped.vs, direct.vs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mapped.pg_advantages, direct.pg_advantages, rtol=1e-6, atol=1e-6)


def test_no_gradient_flows_through_targets():
    inputs = _random_inputs(seed=12, t=6, batch_shape=(3,))
    rng = np.random.default_rng(0)
    w_vs, w_pg = rng.normal(size=(2, 6, 3)).astype(np.float32)

    def loss(x):
        out = _call(x, 3.7, 2.2, 0.9)
        return jnp.sum(w_vs * out.vs) + jnp.sum(w_pg * out.pg_advantages)

    grads = jax.grad(loss)(inputs)
    for name, grad in grads.items():
        np.testing.assert_array_equal(grad, np.zeros_like(inputs[name]), err_msg=name)


# --- from_logits -------------------------------------------------------------------------

PARTS = {"flag": 2, "end": 9, "control": 9, "size": 4}


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _random_logits_inputs(seed: int, t: int, batch_shape: tuple[int, ...]):
    rng = np.random.default_rng(seed)
    shape = (t, *batch_shape)
    behaviour = {k: rng.normal(0, 2, (*shape, n)).astype(np.float32) for k, n in PARTS.items()}
    target = {k: rng.normal(0, 2, (*shape, n)).astype(np.float32) for k, n in PARTS.items()}
    actions = {k: rng.integers(0, n, shape).astype(np.int32) for k, n in PARTS.items()}
    # SPIRAL-like masks: on a "move" step only flag and end count.
    paint = rng.uniform(size=shape) < 0.6
    masks = {k: (np.ones(shape) if k in ("flag", "end") else paint).astype(np.float32)
             for k in PARTS}
    return behaviour, target, actions, masks


def _hand_log_probs(logits, actions, masks) -> np.ndarray:
    total = 0.0
    for k in PARTS:
        lp = np.take_along_axis(_log_softmax64(logits[k]), actions[k][..., None], axis=-1)[..., 0]
        total = total + masks[k] * lp
    return total


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 4)])
@pytest.mark.parametrize("lam", [1.0, 0.9])
def test_from_logits_matches_from_importance_weights(batch_shape, lam):
    t = 7
    behaviour, target, actions, masks = _random_logits_inputs(1, t, batch_shape)
    rest = _random_inputs(2, t, batch_shape)
    del rest["log_rhos"]
    out = vtrace.from_logits(behaviour, target, actions, masks, **rest,
                             clip_rho_threshold=3.7, clip_pg_rho_threshold=2.2, lambda_=lam)
    ref_target = _hand_log_probs(target, actions, masks)
    ref_behaviour = _hand_log_probs(behaviour, actions, masks)
    ref_log_rhos = ref_target - ref_behaviour
    assert _relative_error(out.target_action_log_probs, ref_target) <= MAX_REL_ERR
    assert _relative_error(out.behaviour_action_log_probs, ref_behaviour) <= MAX_REL_ERR
    assert _relative_error(out.log_rhos, ref_log_rhos) <= MAX_REL_ERR
    direct = vtrace.from_importance_weights(
        ref_log_rhos.astype(np.float32), **rest,
        clip_rho_threshold=3.7, clip_pg_rho_threshold=2.2, lambda_=lam)
    np.testing.assert_allclose(out.vs, direct.vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pg_advantages, direct.pg_advantages, rtol=1e-5, atol=1e-5)
    ref_vs, ref_pg = _brute_force(ref_log_rhos, *rest.values(), 3.7, 2.2, lam)
    assert _relative_error(out.vs, ref_vs) <= MAX_REL_ERR
    assert _relative_error(out.pg_advantages, ref_pg) <= MAX_REL_ERR


def test_masked_parts_do_not_count():
    t, batch_shape = 6, (4,)
    behaviour, target, actions, masks = _random_logits_inputs(3, t, batch_shape)
    rest = _random_inputs(4, t, batch_shape)
    del rest["log_rhos"]
    base = vtrace.from_logits(behaviour, target, actions, masks, **rest)
    # Scramble the masked-out entries, including an impossible (-inf) action there.
    rng = np.random.default_rng(5)
    behaviour2 = {k: v.copy() for k, v in behaviour.items()}
    target2 = {k: v.copy() for k, v in target.items()}
    for k in ("control", "size"):
        off = masks[k] == 0
        assert off.any() and (~off).any()
        behaviour2[k][off] = rng.normal(0, 5, behaviour2[k][off].shape)
        target2[k][off] = -np.inf
        target2[k][off, 0] = 0.0  # Keep the softmax defined; any action but 0 is impossible.
    scrambled = vtrace.from_logits(behaviour2, target2, actions, masks, **rest)
    for field in ("vs", "pg_advantages", "log_rhos", "target_action_log_probs"):
        np.testing.assert_array_equal(getattr(scrambled, field), getattr(base, field), field)
    # With every part masked out the action has probability 1 under both policies.
    zero = {k: np.zeros_like(m) for k, m in masks.items()}
    out = vtrace.from_logits(behaviour, target, actions, zero, **rest)
    np.testing.assert_array_equal(out.log_rhos, np.zeros((t, *batch_shape)))
    on_policy = vtrace.from_importance_weights(np.zeros((t, *batch_shape), np.float32), **rest)
    np.testing.assert_array_equal(out.vs, on_policy.vs)


def test_masks_none_means_all_parts_count():
    behaviour, target, actions, _ = _random_logits_inputs(6, 4, (3,))
    rest = _random_inputs(7, 4, (3,))
    del rest["log_rhos"]
    ones = {k: np.ones(a.shape, np.float32) for k, a in actions.items()}
    a = vtrace.from_logits(behaviour, target, actions, None, **rest)
    b = vtrace.from_logits(behaviour, target, actions, ones, **rest)
    np.testing.assert_array_equal(a.log_rhos, b.log_rhos)
    np.testing.assert_array_equal(a.vs, b.vs)


def test_from_logits_gradients():
    """Target log-probs keep their gradient (onehot(a) - softmax, masked); targets do not."""
    t, batch_shape = 5, (3,)
    behaviour, target, actions, masks = _random_logits_inputs(8, t, batch_shape)
    rest = _random_inputs(9, t, batch_shape)
    del rest["log_rhos"]

    def field_sum(target_logits, field):
        out = vtrace.from_logits(behaviour, target_logits, actions, masks, **rest)
        return jnp.sum(getattr(out, field))

    grad_lp = jax.grad(field_sum)(target, "target_action_log_probs")
    for k, n in PARTS.items():
        p = np.exp(_log_softmax64(target[k]))
        expected = masks[k][..., None] * (np.eye(n)[actions[k]] - p)
        np.testing.assert_allclose(grad_lp[k], expected, rtol=1e-5, atol=1e-6, err_msg=k)
    for field in ("vs", "pg_advantages"):
        grad = jax.grad(field_sum)(target, field)
        for k in PARTS:
            np.testing.assert_array_equal(grad[k], np.zeros_like(target[k]), err_msg=field)


def test_from_logits_under_jit_and_vmap():
    behaviour, target, actions, masks = _random_logits_inputs(10, 6, (4,))
    rest = _random_inputs(11, 6, (4,))
    del rest["log_rhos"]

    def run(b, tl, a, m, r):
        return vtrace.from_logits(b, tl, a, m, **r, clip_rho_threshold=3.7, lambda_=0.9)

    eager = run(behaviour, target, actions, masks, rest)
    jitted = jax.jit(run)(behaviour, target, actions, masks, rest)
    in_axes = ({k: 1 for k in PARTS},) * 4 + (
        {k: (0 if k == "bootstrap_value" else 1) for k in rest},)
    mapped = jax.vmap(run, in_axes=in_axes, out_axes=1)(behaviour, target, actions, masks, rest)
    for other in (jitted, mapped):
        for field in ("vs", "pg_advantages", "log_rhos", "target_action_log_probs"):
            np.testing.assert_allclose(getattr(other, field), getattr(eager, field),
                                       rtol=1e-5, atol=1e-6, err_msg=field)


def test_log_probs_helper():
    rng = np.random.default_rng(12)
    logits = rng.normal(0, 3, (5, 2, 7)).astype(np.float32)
    actions = rng.integers(0, 7, (5, 2))
    got = vtrace.log_probs_from_logits_and_actions(logits, actions)
    expected = np.take_along_axis(_log_softmax64(logits), actions[..., None], -1)[..., 0]
    assert _relative_error(got, expected) <= MAX_REL_ERR


# --- bad input ---------------------------------------------------------------------------

def _good():
    return _random_inputs(13, 4, (3,))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: x.update(rewards=x["rewards"][:3]), "rewards"),
        (lambda x: x.update(discounts=x["discounts"][:, :2]), "discounts"),
        (lambda x: x.update(bootstrap_value=x["values"]), "bootstrap_value"),
        (lambda x: x.update(values=x["values"][:0], log_rhos=x["log_rhos"][:0],
                            rewards=x["rewards"][:0], discounts=x["discounts"][:0]), "T >= 1"),
        (lambda x: x.update(log_rhos=x["log_rhos"].astype(np.int32)), "floating"),
    ],
)
def test_bad_arrays_raise_value_error(change, message):
    inputs = _good()
    change(inputs)
    with pytest.raises(ValueError, match=message):
        vtrace.from_importance_weights(**inputs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambda_": 1.5}, "lambda_"),
        ({"lambda_": -0.1}, "lambda_"),
        ({"lambda_": None}, "lambda_"),
        ({"lambda_": np.ones(3)}, "lambda_"),
        ({"clip_rho_threshold": -1.0}, "clip_rho_threshold"),
        ({"clip_pg_rho_threshold": float("nan")}, "clip_pg_rho_threshold"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vtrace.from_importance_weights(**_good(), **kwargs)


def test_bad_logits_inputs_raise_value_error():
    behaviour, target, actions, masks = _random_logits_inputs(14, 4, (3,))
    rest = _random_inputs(15, 4, (3,))
    del rest["log_rhos"]
    missing = {k: v for k, v in masks.items() if k != "size"}
    with pytest.raises(ValueError, match="masks"):
        vtrace.from_logits(behaviour, target, actions, missing, **rest)
    out_of_range = dict(actions, flag=actions["flag"] + 2)
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 2\)"):
        vtrace.from_logits(behaviour, target, out_of_range, masks, **rest)
    wide = dict(target, end=np.zeros((4, 3, 10), np.float32))
    with pytest.raises(ValueError, match="target_logits"):
        vtrace.from_logits(behaviour, wide, actions, masks, **rest)
    float_actions = dict(actions, end=actions["end"].astype(np.float32))
    with pytest.raises(ValueError, match="integer"):
        vtrace.from_logits(behaviour, target, float_actions, masks, **rest)
