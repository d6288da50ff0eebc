"""The config system: every config's sections go one to one into their constructors,
survive config.json, and bad settings fail with one line before anything compiles."""

from __future__ import annotations

import importlib
import inspect
import json

import ml_collections
import pytest

from experiments import configs
from experiments.configs import small
from spiral_jax import environments, experiment
from spiral_jax.agent import AgentConfig
from spiral_jax.disc_learner import DiscLearnerConfig
from spiral_jax.discriminator import DiscriminatorConfig
from spiral_jax.policy_learner import LearnerConfig
from spiral_jax.rewards import RewardConfig

SECTIONS = {
    "agent": AgentConfig,
    "disc": DiscriminatorConfig,
    "disc_learner": DiscLearnerConfig,
    "reward": RewardConfig,
    "learner": LearnerConfig,
}


def _load(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module(f"experiments.configs.{name}").get_config()


def _sections(config) -> dict:
    """Section name -> constructor: the environment's (`env` or `scene_env`) and the rest."""
    return {environments.section_of(config): environments.constructor_of(config), **SECTIONS}


def _construct_all(config):
    shared = dict(conditional=config.conditional, dtype=config.compute_dtype)
    out = {}
    for section, constructor in _sections(config).items():
        takes = inspect.signature(constructor).parameters
        out[section] = experiment.construct(
            constructor, config, section, **{k: v for k, v in shared.items() if k in takes}
        )
    return out


@pytest.mark.parametrize("name", configs.names())
def test_every_config_builds_its_parts_from_its_sections(name):
    config = _load(name)
    docstring = open(configs.path(name)).read().split('"""')[1]
    # It starts with the command that runs it (the workdir defaults to runs/<name>).
    assert docstring.splitlines()[0].startswith(f"python -m experiments.train --config={name}")
    assert len(docstring.strip().splitlines()) <= 12
    experiment.validate_config(config, num_devices=1)
    # The other environment's section is absent, not silently unused.
    others = {section for section, _ in environments.ENVIRONMENTS.values()}
    assert others & set(config) == {environments.section_of(config)}
    for section, constructor in _sections(config).items():
        # Every keyword of the constructor can be set, and nothing else is there.
        takes = set(inspect.signature(constructor).parameters) - set(experiment.SHARED_FIELDS)
        assert set(config[section]) == takes, section
    parts = _construct_all(config)
    # config.json (tuples become lists) builds the same parts.
    reloaded = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    again = _construct_all(reloaded)
    for section in ("agent", "disc", "disc_learner", "reward", "learner"):
        assert again[section] == parts[section], section
    env = environments.section_of(config)
    assert again[env].action_spec() == parts[env].action_spec()
    for field in ("canvas_width", "episode_length"):
        assert getattr(again[env], field) == getattr(parts[env], field), field


def test_unknown_names_and_fields_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown config 'nosuch'; available: .*mnist5k"):
        configs.path("nosuch")
    assert configs.resolve_argv(["x", "--config=small", "--config.seed=1"]) == [
        "x", f"--config={configs.path('small')}", "--config.seed=1"
    ]
    config = small.get_config()
    with config.unlocked():
        config.disc.widths = (8, 16)  # a field of an older version
    with pytest.raises(experiment.ConfigError, match="config.disc has unknown field.* widths"):
        experiment.build(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("reward.kind", "l2", "conditional=True"),
        ("disc_learner.loss", "hinge", "hinge"),
        ("env.grid_width", 32, "grid_width"),
        ("reward.l2_pools", (3,), "does not divide"),
        ("reward.scale", 0.0, "reward.scale"),
        ("learner.ema_decay", 1.0, r"learner.ema_decay=1.0: must be in \[0, 1\)"),
        ("learner.ema_decay", -0.1, r"learner.ema_decay=-0.1: must be in \[0, 1\)"),
        ("agent.lstm_size", 40, "agent.lstm_size=40"),
        ("disc.channels", (8, 0), r"disc.channels=\(8, 0\)"),
        ("compute_dtype", "float16", "compute_dtype='float16'"),
        ("checkpoint_every", 0, "checkpoint_every=0 must be an integer >= 1"),
        ("log_every", 0, "log_every=0 must be an integer >= 1"),
        ("keep_checkpoints", 0, "keep_checkpoints=0 must be an integer >= 1"),
        ("num_train_steps", 0, "num_train_steps=0 must be an integer >= 1"),
        ("disc_learner.updates_per_step", -1, "updates_per_step=-1"),
    ],
)
def test_bad_settings_fail_before_compiling(field, value, message):
    config = small.get_config()
    *parents, leaf = field.split(".")
    section = config
    for p in parents:
        section = section[p]
    section[leaf] = value
    with pytest.raises(experiment.ConfigError, match=message) as error:
        experiment.build(config)
    assert "\n" not in str(error.value)


def test_the_batch_must_split_over_the_devices():
    config = small.get_config()
    config.batch_size = 7
    with pytest.raises(experiment.ConfigError, match="batch_size=7 must be a positive multiple"):
        experiment.validate_config(config, num_devices=2)
