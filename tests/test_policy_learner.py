"""Tests of the policy's learner (spiral_jax.policy_learner): its config and the
entropy term of its loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import small
from spiral_jax import agent as agent_lib
from spiral_jax import policy_learner as PL
from spiral_jax.action_space import action_masks
from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.rollout import Trajectory
from spiral_jax.types import FIRST, LAST, MID

# ----------------------------------------------------------------------------------------
# LearnerConfig.


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", 0.0, r"learner\.learning_rate=0\.0: must be a number > 0"),
        ("learning_rate", "1e-4", r"learner\.learning_rate='1e-4': must be a number > 0"),
        ("b1", 1.5, r"learner\.b1=1\.5: must be a number in \[0, 1\)"),
        ("max_grad_norm", -1.0, r"learner\.max_grad_norm=-1\.0: must be a number > 0"),
        ("passes", 0, r"learner\.passes=0: must be an int >= 1"),
        ("passes", 1.5, r"learner\.passes=1\.5: must be an int >= 1"),
        ("passes", True, r"learner\.passes=True: must be an int >= 1"),
        ("vtrace_lambda", 2.0, r"learner\.vtrace_lambda=2\.0: must be in \[0, 1\]"),
        ("entropy_cost", -0.01, r"learner\.entropy_cost=-0\.01: must be >= 0"),
        ("baseline_cost", -1, r"learner\.baseline_cost=-1: must be >= 0"),
        ("ema_decay", 1.0, r"learner\.ema_decay=1\.0: must be in \[0, 1\)"),
        ("ema_decay", -0.5, r"learner\.ema_decay=-0\.5: must be in \[0, 1\)"),
        ("lr_decay_steps", -1, r"learner\.lr_decay_steps=-1: must be an int >= 0"),
        ("lr_decay_steps", 10.5, r"learner\.lr_decay_steps=10\.5: must be an int >= 0"),
    ],
)
def test_config_raises_one_line_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        PL.LearnerConfig(**{field: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("passes", [1, 2])
def test_learning_rate_decays_as_a_cosine_over_train_steps(passes):
    """With a constant gradient, Adam's bias-corrected step is the learning rate itself
    (up to epsilon), so each update's size reads the schedule off: 0.5 lr (1 + cos(pi k /
    N)) at update k of N = lr_decay_steps * passes, and 0 from then on."""
    lr, steps = 3e-3, 5
    cfg = PL.LearnerConfig(learning_rate=lr, lr_decay_steps=steps, passes=passes, eps=1e-12,
                           max_grad_norm=1e6)
    opt = PL.make_optimizer(cfg)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([0.5, -2.0, 1.0])}
    state = opt.init(params)
    total = steps * passes
    for k in range(total + 3):
        updates, state = opt.update(grads, state, params)
        want = 0.5 * lr * (1 + np.cos(np.pi * min(k, total) / total))
        np.testing.assert_allclose(np.asarray(updates["w"]), -want * np.sign([0.5, -2.0, 1.0]),
                                   rtol=1e-5, atol=1e-12)
    constant = PL.make_optimizer(PL.LearnerConfig(learning_rate=lr, eps=1e-12))
    cstate = constant.init(params)
    for _ in range(total + 3):
        updates, cstate = constant.update(grads, cstate, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -lr * np.sign([0.5, -2.0, 1.0]),
                               rtol=1e-5)


def test_config_defaults():
    cfg = PL.LearnerConfig()
    assert (cfg.learning_rate, cfg.b1, cfg.entropy_cost, cfg.baseline_cost) == (
        1e-4, 0.5, 0.01, 0.5)
    assert (cfg.passes, cfg.ema_decay, cfg.normalize_entropy) == (1, 0.0, False)
    hash(cfg)  # a static argument of the jitted step


# ----------------------------------------------------------------------------------------
# The loss.


def _trajectory(agent, t: int, b: int, flag: np.ndarray, noise_dim: int) -> Trajectory:
    """A whole-episode trajectory with the given flags (and random other parts)."""
    rng = np.random.default_rng(0)
    spec = dict(agent.action_spec)
    action = {k: jnp.asarray(rng.integers(0, n, size=(t, b)), jnp.int32) for k, n in spec.items()}
    action["flag"] = jnp.asarray(flag, jnp.int32)
    prev_flag = jnp.concatenate([jnp.zeros((1, b), jnp.int32), action["flag"][:-1]])
    step_type = np.full((t, b), MID, np.int32)
    step_type[0] = FIRST
    next_step_type = np.full((t, b), MID, np.int32)
    next_step_type[-1] = LAST
    canvas = jnp.asarray(rng.uniform(size=(t + 1, b, 16, 16, 1)), jnp.float32)
    return Trajectory(
        observation={"canvas": canvas[:-1], "action_mask": action_masks(prev_flag, spec)},
        step_type=jnp.asarray(step_type),
        noise=jnp.asarray(rng.normal(size=(t, b, noise_dim)), jnp.float32),
        action=action,
        behaviour_logits={k: jnp.zeros((t, b, n)) for k, n in spec.items()},
        action_mask=action_masks(action["flag"], spec),
        behaviour_log_prob=jnp.zeros((t, b)),
        baseline=jnp.zeros((t, b)),
        discount=jnp.asarray((next_step_type != LAST).astype(np.float32)),
        next_step_type=jnp.asarray(next_step_type),
        final_canvas=canvas[-1],
        bootstrap_value=jnp.zeros((b,)),
        initial_agent_state=agent_lib.initial_state(agent.action_spec, agent.config, b),
    )


def test_normalized_entropy_weighs_each_part_by_its_largest_entropy():
    config = small.get_config()
    env = LibMyPaint(**config.env)
    agent = agent_lib.make_agent(env.action_spec(), agent_lib.AgentConfig(**config.agent))
    spec = env.action_spec()
    largest = PL.max_entropies(spec)
    assert largest["flag"] == pytest.approx(np.log(2))
    assert largest["end"] == pytest.approx(np.log(spec["end"]))
    # Uniform logits: each part's entropy is its maximum, so the normalised entropy of
    # a paint step (all parts count) is the number of parts.
    params = agent_lib.init_params(agent, jax.random.PRNGKey(0), env.observation_shape)
    zero = jax.tree.map(np.zeros_like, params)
    t, b = env.episode_length - 1, 2
    flag = np.random.default_rng(1).integers(0, 2, size=(t, b))
    traj = _trajectory(agent, t, b, flag, agent.config.episode_noise_dim)
    rewards = np.zeros((t, b), np.float32)
    configs = {normalize: PL.LearnerConfig(**dict(config.learner, normalize_entropy=normalize))
               for normalize in (True, False)}
    metrics = jax.jit(lambda p, traj, r: {
        normalize: PL.loss_fn(p, agent, cfg, traj, r, config.reward.discount)[1]
        for normalize, cfg in configs.items()
    })(zero, traj, rewards)
    paint = np.asarray(traj.action["flag"]) == 1
    assert 0 < paint.sum() < paint.size  # both kinds of step
    for normalize, m in metrics.items():
        if normalize:
            want = np.mean(np.where(paint, len(spec), 2))
        else:
            full = sum(np.log(n) for n in spec.values())
            want = np.mean(np.where(paint, full, np.log(2) + np.log(spec["end"])))
        assert float(m["entropy"]) == pytest.approx(want, rel=1e-5)


def test_max_entropies_are_log_choices():
    got = PL.max_entropies({"control": 256, "end": 256, "flag": 2, "size": 6, "red": 1})
    assert got == pytest.approx({"control": np.log(256), "end": np.log(256),
                                 "flag": np.log(2), "size": np.log(6),
                                 "red": np.log(2)})  # a 1-way part: log 2, never 0
    # Tuples of (name, choices), as agents hold their spec, work too.
    assert PL.max_entropies((("flag", 2), ("end", 16))) == pytest.approx(
        {"flag": np.log(2), "end": np.log(16)})
