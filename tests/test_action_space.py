"""Tests of the masked log-probs and entropies of spiral_jax.action_space against float64
numpy, with masked-out parts whose logits are -inf (a head that rules choices out): they
must come out exactly 0, with no NaN in the values or in the gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import action_space as AS

SHAPE = (5, 7)  # [T, B]
SPEC = {"control": 16, "end": 16, "flag": 2, "size": 4, "red": 20}


def _log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)


def _inputs(seed: int = 0):
    """Finite logits, actions and masks (`action_masks`: moves mask the paint parts);
    then -inf written into some logits of every masked-out part, and one masked-out
    part's logits made all -inf (its log_softmax alone would be NaN)."""
    rng = np.random.default_rng(seed)
    logits = {k: rng.normal(scale=3.0, size=SHAPE + (n,)).astype(np.float32)
              for k, n in SPEC.items()}
    actions = {k: rng.integers(0, n, size=SHAPE).astype(np.int32) for k, n in SPEC.items()}
    masks = {k: np.asarray(v) for k, v in
             AS.action_masks(jnp.asarray(actions["flag"]), tuple(SPEC)).items()}
    finite = {k: v.copy() for k, v in logits.items()}
    off = {k: masks[k] == 0 for k in SPEC}
    assert off["size"].any() and (~off["size"]).any()  # both kinds of steps occur
    for k in SPEC:
        lg = logits[k]
        lg[off[k], ::2] = -np.inf  # including, often, the chosen action's logit
    t, b = np.argwhere(off["size"])[0]
    logits["size"][t, b] = -np.inf
    return logits, finite, actions, masks, off


@pytest.mark.parametrize("mask_kind", ["float", "bool"])
def test_masked_parts_with_minus_inf_logits_are_exactly_zero_and_the_rest_matches_numpy(
    mask_kind,
):
    logits, finite, actions, masks, off = _inputs()
    if mask_kind == "bool":
        masks = {k: v != 0 for k, v in masks.items()}
    jl = {k: jnp.asarray(v) for k, v in logits.items()}
    jm = {k: jnp.asarray(v) for k, v in masks.items()}
    lp = AS.masked_log_probs(jl, {k: jnp.asarray(v) for k, v in actions.items()}, jm)
    ent = AS.masked_entropies(jl, jm)
    for k in SPEC:
        assert lp[k].dtype == jnp.float32 and ent[k].dtype == jnp.float32
        got_lp, got_ent = np.asarray(lp[k]), np.asarray(ent[k])
        assert np.all(np.isfinite(got_lp)) and np.all(np.isfinite(got_ent))
        assert np.all(got_lp[off[k]] == 0.0) and np.all(got_ent[off[k]] == 0.0)
        # Unmasked steps: the finite logits' float64 log-softmax (their logits are intact).
        logp = _log_softmax64(finite[k])
        want_lp = np.take_along_axis(logp, actions[k][..., None], -1)[..., 0]
        want_ent = -(np.exp(logp) * logp).sum(-1)
        np.testing.assert_allclose(got_lp[~off[k]], want_lp[~off[k]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_ent[~off[k]], want_ent[~off[k]], rtol=1e-5, atol=1e-5)


def test_gradients_are_finite_and_zero_for_masked_parts_with_minus_inf_logits():
    logits, finite, actions, masks, off = _inputs(seed=1)
    ja = {k: jnp.asarray(v) for k, v in actions.items()}
    jm = {k: jnp.asarray(v) for k, v in masks.items()}

    def objective(lg):
        lp = AS.masked_log_probs(lg, ja, jm)
        ent = AS.masked_entropies(lg, jm)
        return sum(jnp.sum(v) for v in lp.values()) + sum(jnp.sum(v) for v in ent.values())

    grads = jax.grad(objective)({k: jnp.asarray(v) for k, v in logits.items()})
    grads_finite = jax.grad(objective)({k: jnp.asarray(v) for k, v in finite.items()})
    for k in SPEC:
        g = np.asarray(grads[k])
        assert np.all(np.isfinite(g)), k
        assert np.all(g[off[k]] == 0.0), k  # masked parts do not move their logits
        # Unmasked steps get the same gradient as with finite logits everywhere.
        np.testing.assert_allclose(g[~off[k]], np.asarray(grads_finite[k])[~off[k]],
                                   rtol=1e-5, atol=1e-6)
    # The unmasked log-prob gradient is onehot(action) - softmax, as in float64 numpy.
    k = "flag"  # never masked
    p = np.exp(_log_softmax64(finite[k]))
    onehot = np.eye(SPEC[k])[actions[k]]
    ent_grad = -p * (_log_softmax64(finite[k])
                     - (p * _log_softmax64(finite[k])).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(grads[k]), onehot - p + ent_grad,
                               rtol=1e-4, atol=1e-5)


def test_output_dtype_follows_logits_and_mask_as_before():
    logits = {"flag": jnp.zeros((3, 2), jnp.bfloat16)}
    actions = {"flag": jnp.zeros((3,), jnp.int32)}
    # bfloat16 logits times a float32 mask gave float32; a bool mask keeps bfloat16.
    assert AS.masked_log_probs(logits, actions, {"flag": jnp.ones((3,))})["flag"].dtype \
        == jnp.float32
    assert AS.masked_entropies(logits, {"flag": jnp.ones((3,), bool)})["flag"].dtype \
        == jnp.bfloat16
