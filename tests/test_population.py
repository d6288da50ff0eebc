"""A population trained as one program (`spiral_jax.population`): its config, the
members' draws, truncation selection and explore against numpy references, and
exploit/explore on a state; slow: a member's step in the vmapped population step
equals the single agent's step with the member's hyperparameters, and members split
over two devices step as on one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import checksums
from spiral_jax import population as P
from spiral_jax import replay as replay_lib
from spiral_jax.experiment import TrainState
from tests import device_split


@pytest.mark.parametrize("field, value, message", [
    ("size", 0, r"population\.size=0: must be an int >= 1"),
    ("size", 2.0, r"population\.size=2\.0: must be an int >= 1"),
    ("exploit_every", -1, r"population\.exploit_every=-1: must be an int >= 0"),
    ("truncation", 0.6, r"population\.truncation=0\.6: must be in \(0, 0\.5\]"),
    ("perturb", 0.9, r"population\.perturb=0\.9: must be >= 1"),
    ("learning_rate_range", (3e-4, 1e-5), r"population\.learning_rate_range=.*low <= high"),
    ("entropy_cost_range", (0.0, 0.1), r"population\.entropy_cost_range=.*0 < low"),
    ("fitness", "reward", r"population\.fitness='reward': allowed"),
    ("shared_disc", 1, r"population\.shared_disc=1: must be a bool"),
    ("member_shards", -1, r"population\.member_shards=-1: must be an int >= 0"),
    ("member_shards", 3, r"population\.member_shards=3 must divide population\.size=4"),
])
def test_bad_config_is_refused_in_one_line(field, value, message):
    kwargs = {"size": 4, field: value}
    with pytest.raises(ValueError, match=message):
        P.PopulationConfig(**kwargs)


def test_exploit_needs_two_members_and_json_lists_become_tuples():
    with pytest.raises(ValueError, match=r"exploit_every=5 needs population\.size >= 2"):
        P.PopulationConfig(size=1, exploit_every=5)
    cfg = P.PopulationConfig(size=3, learning_rate_range=[1e-5, 1e-4])
    assert cfg.learning_rate_range == (1e-5, 1e-4) and cfg.stacked
    assert not P.PopulationConfig().stacked


@pytest.mark.parametrize("size, shards, devices, want", [
    (4, 0, 1, 1), (4, 0, 2, 2), (4, 0, 8, 4), (6, 0, 4, 2), (3, 0, 2, 1), (1, 0, 4, 1),
    (4, 2, 8, 2), (4, 1, 8, 1),
])
def test_members_split_over_as_many_device_groups_as_divide_both(size, shards, devices, want):
    assert P.PopulationConfig(size=size, member_shards=shards).shards(devices) == want


def test_member_shards_that_do_not_divide_the_devices_are_refused():
    with pytest.raises(ValueError, match=r"member_shards=4 must divide the number of "
                                         r"devices \(6\)"):
        P.PopulationConfig(size=8, member_shards=4).shards(6)


@pytest.mark.parametrize("size, truncation, replaced", [
    (2, 0.25, 1), (4, 0.25, 1), (8, 0.25, 2), (10, 0.2, 2), (12, 0.5, 6),
])
def test_number_replaced(size, truncation, replaced):
    assert P.PopulationConfig(size=size, truncation=truncation).num_replaced == replaced


def test_members_are_drawn_log_uniformly_within_the_ranges():
    cfg = P.PopulationConfig(size=4000)
    members = jax.device_get(P.init_members(cfg, jax.random.PRNGKey(0)))
    assert not P.measured(members["fitness"]).any()
    for name, (low, high) in cfg.ranges().items():
        x = members[name]
        assert x.shape == (4000,) and x.dtype == np.float32
        assert np.all((x >= low * (1 - 1e-6)) & (x <= high * (1 + 1e-6)))
        # Log-uniform: log x is uniform on [log low, log high]; its quartiles say so.
        u = (np.log(x) - np.log(low)) / (np.log(high) - np.log(low))
        np.testing.assert_allclose(np.quantile(u, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75],
                                   atol=0.03)


def _selection_reference(fitness: np.ndarray, k: int) -> np.ndarray:
    """Float64 numpy: the k worst take the k best's states, worst from best."""
    order = sorted(range(len(fitness)), key=lambda i: (fitness[i], i))
    best, worst = order[:k], order[::-1][:k]
    sources = np.arange(len(fitness))
    for w, b in zip(worst, best, strict=True):
        sources[w] = b
    return sources


def test_a_new_population_can_be_checkpointed_before_its_fitness_is_measured():
    """A checkpoint refuses a non-finite state, and a population is saved before its
    first exploit step whenever checkpoints come sooner (or it never exploits)."""
    members = P.init_members(P.PopulationConfig(size=3), jax.random.PRNGKey(0))
    assert checksums.inspect(members)[1] == []
    fitness = np.array([P.UNMEASURED, 0.5, np.float32(1e30)], np.float32)
    assert P.measured(fitness).tolist() == [False, True, True]


@pytest.mark.parametrize("size, k", [(2, 1), (4, 1), (8, 2), (9, 4)])
def test_truncation_selection_matches_a_reference(size, k):
    rng = np.random.default_rng(size)
    for _ in range(20):
        fitness = rng.normal(size=size)
        got = np.asarray(P.selection(jnp.asarray(fitness, jnp.float32), k))
        np.testing.assert_array_equal(got, _selection_reference(fitness, k))
        # The best keep their own state; exactly k members are replaced.
        assert np.sum(got != np.arange(size)) == k


def test_explore_perturbs_only_the_copies_and_stays_in_range():
    cfg = P.PopulationConfig(size=6, perturb=1.25, learning_rate_range=(1e-5, 1e-3),
                             entropy_cost_range=(1e-3, 1e-1))
    members = {"learning_rate": jnp.array([1e-4, 1e-4, 1e-3, 1e-5, 2e-4, 3e-4]),
               "entropy_cost": jnp.array([1e-2, 1e-1, 1e-2, 1e-3, 5e-2, 1e-2]),
               "fitness": jnp.arange(6.0)}
    replaced = jnp.array([False, True, True, True, True, False])
    seen_up = seen_down = False
    for seed in range(8):
        out = jax.device_get(P.explore(members, replaced, jax.random.PRNGKey(seed), cfg))
        np.testing.assert_array_equal(out["fitness"], np.arange(6.0))
        for name, (low, high) in cfg.ranges().items():
            old, new = np.asarray(members[name], np.float64), out[name].astype(np.float64)
            np.testing.assert_array_equal(new[[0, 5]], old[[0, 5]])
            for i in (1, 2, 3, 4):
                candidates = np.clip([old[i] * 1.25, old[i] / 1.25], low, high)
                assert np.min(np.abs(candidates - new[i]) / old[i]) < 1e-6
                seen_up |= bool(new[i] > old[i] * 1.1)
                seen_down |= bool(new[i] < old[i] / 1.1)
    assert seen_up and seen_down


def _toy_state(size: int, shared_disc: bool) -> TrainState:
    """A TrainState whose member leaves hold the member's index (a shared D: 7)."""
    ids = jnp.arange(size, dtype=jnp.float32)

    def per_member(shape):
        return ids.reshape((size,) + (1,) * len(shape)) * jnp.ones((size,) + shape)

    disc = (lambda shape: jnp.full(shape, 7.0)) if shared_disc else per_member
    replay = replay_lib.Replay(canvases=per_member((3, 2, 2, 1)), targets=None,
                               pointer=per_member(()), count=per_member(()))
    members = {"learning_rate": 1e-4 * jnp.ones(size), "entropy_cost": 1e-2 * jnp.ones(size),
               "fitness": jnp.array([3.0, 0.5, 2.0, 1.0][:size])}
    return TrainState(
        step=jnp.array(5), policy_params={"w": per_member((2, 3))},
        policy_opt_state={"mu": per_member((2, 3))}, disc_params={"d": disc((4,))},
        disc_spectral=None, disc_opt_state={"m": disc((4,))}, replay=replay,
        policy_ema={"w": per_member((2, 3))}, members=members,
    )


@pytest.mark.parametrize("shared_disc", [True, False])
def test_exploit_copies_the_whole_member_state_of_the_best_over_the_worst(shared_disc):
    cfg = P.PopulationConfig(size=4, shared_disc=shared_disc, exploit_every=10)
    state = _toy_state(4, shared_disc)
    new, sources = P.make_exploit_explore(cfg)(state, jax.random.PRNGKey(0))
    # Fitness [3, 0.5, 2, 1]: member 0 (worst) takes member 1's (best) state.
    np.testing.assert_array_equal(np.asarray(sources), [1, 1, 2, 3])
    want = np.array([1.0, 1.0, 2.0, 3.0])
    for leaf in (new.policy_params["w"], new.policy_opt_state["mu"], new.policy_ema["w"],
                 new.replay.canvases, new.replay.pointer):
        np.testing.assert_array_equal(np.asarray(leaf).reshape(4, -1).max(axis=1), want)
    if shared_disc:
        np.testing.assert_array_equal(np.asarray(new.disc_params["d"]), np.full(4, 7.0))
    else:
        np.testing.assert_array_equal(np.asarray(new.disc_params["d"])[:, 0], want)
    np.testing.assert_array_equal(np.asarray(new.members["fitness"]), [0.5, 0.5, 2.0, 1.0])
    lr = np.asarray(new.members["learning_rate"])
    np.testing.assert_allclose(lr[1:], 1e-4)
    np.testing.assert_allclose(sorted([lr[0] / 1e-4, 1e-4 / lr[0]]), [1 / 1.2, 1.2], rtol=1e-5)
    assert int(new.step) == 5


def test_member_is_a_single_agents_state():
    state = _toy_state(3, shared_disc=False)
    m = P.member(state, 2, shared_disc=False)
    assert m.members is None and m.policy_params["w"].shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(m.policy_params["w"]), np.full((2, 3), 2.0))
    np.testing.assert_array_equal(np.asarray(m.disc_params["d"]), np.full(4, 2.0))
    assert m.replay.canvases.shape == (3, 2, 2, 1) and int(m.replay.pointer) == 2


@pytest.mark.slow
def test_a_members_step_is_the_single_agents_step_with_its_hyperparameters():
    """With a D per member, member i's part of the vmapped population step equals the
    single-agent step from member i's state with key fold_in(key, i) and the config's
    learning rate and entropy cost set to member i's."""
    from experiments.configs import small
    from spiral_jax import datasets as data_lib
    from spiral_jax import experiment, train_step

    dataset = data_lib.load("mnist5k", "train", image_size=16, channels=1, max_examples=256)
    config = small.get_config()
    config.disc_learner.updates_per_step = 1
    config.learner.passes = 2
    config.population.size = 2
    config.population.shared_disc = False
    exp = experiment.build(config, dataset=dataset)
    state = exp.init_state(jax.random.PRNGKey(0))
    members = jax.device_get(state.members)
    singles = [jax.device_get(P.member(state, i, shared_disc=False)) for i in range(2)]
    key = jax.random.PRNGKey(7)
    new, metrics = train_step.make_train_step(exp)(state, key)
    new, metrics = jax.device_get((new, metrics))

    for i, single in enumerate(singles):
        c = small.get_config()
        c.disc_learner.updates_per_step = 1
        c.learner.passes = 2
        c.learner.learning_rate = float(members["learning_rate"][i])
        c.learner.entropy_cost = float(members["entropy_cost"][i])
        one = experiment.build(c, dataset=dataset)
        want, want_metrics = train_step.make_train_step(one)(
            one.place(single), jax.random.fold_in(key, i))
        want, want_metrics = jax.device_get((want, want_metrics))
        got = P.member(new, i, shared_disc=False)
        # Adam moves each parameter by at most about the learning rate per pass, whatever
        # the gradient's size; where a gradient is within float noise of Adam's epsilon
        # (vmap sums in another order), that move can differ by a fraction of it. So
        # every element agrees to within the member's learning rate, and nearly all to
        # float noise.
        lr = float(members["learning_rate"][i])
        for name in ("policy_params", "disc_params", "policy_ema"):
            g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(getattr(got, name))])
            w = np.concatenate([np.ravel(x) for x in jax.tree.leaves(getattr(want, name))])
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=lr, err_msg=name)
            close = np.isclose(g, w, rtol=2e-4, atol=2e-6)
            assert close.mean() > 0.999, (name, int((~close).sum()), g.size)
        np.testing.assert_array_equal(got.replay.canvases, want.replay.canvases)
        for k, w in want_metrics.items():
            np.testing.assert_allclose(metrics[k][i], w, rtol=2e-3, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("fitness, conditional, evaluates, want", [
    ("auto", False, True, "frechet"), ("auto", True, False, "l2"),
    ("auto", False, False, "d_score"), ("d_score", True, False, "d_score"),
    ("frechet", False, False, None), ("l2", False, True, None),
])
def test_fitness_kind_by_run_and_refusals(fitness, conditional, evaluates, want):
    import types

    from spiral_jax.experiment import ConfigError
    from spiral_jax.population_loop import fitness_kind

    exp = types.SimpleNamespace(
        population=P.PopulationConfig(size=2, fitness=fitness),
        config=types.SimpleNamespace(conditional=conditional))
    if want is None:
        with pytest.raises(ConfigError, match=f"population.fitness='{fitness}' needs"):
            fitness_kind(exp, evaluates)
    else:
        assert fitness_kind(exp, evaluates) == want


def test_member_scalars_are_the_mean_and_each_member():
    from spiral_jax.population_loop import member_scalars

    out = member_scalars({"loss": jnp.array([1.0, 2.0, 6.0])})
    assert out == {"loss": 3.0, "loss/m0": 1.0, "loss/m1": 2.0, "loss/m2": 6.0}


@pytest.mark.slow
def test_members_split_over_two_devices_equal_the_one_device_population_step():
    """Two members sharing D, one per device: the same step as both on one device
    (D's gradients averaged over the members across devices)."""
    out = device_split.run_split(members=2)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-4000:]
