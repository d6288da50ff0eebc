"""Test-session settings: a JAX compilation cache shared by the session's processes.

JAX's persistent compilation cache, in a directory of this session only (shared with
pytest-xdist's workers, removed at the end): tests that build the same train step or
sampler (most use the `small` config) compile it once. On a 2-core CPU a train step
compiles in tens of seconds; a cache hit takes a few. It is set in `pytest_configure`,
before test modules are imported, so that it is on before anything compiles.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile

import jax
import pytest


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # the controller, or a run without workers (-n 0)
        config.jax_cache_dir = tempfile.mkdtemp(prefix="spiral_jax_test_cache_")
        cache_dir = config.jax_cache_dir
    else:
        cache_dir = workerinput["jax_cache_dir"]
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None:
        shutil.rmtree(config.jax_cache_dir, ignore_errors=True)


if importlib.util.find_spec("xdist") is not None:

    def pytest_configure_node(node) -> None:
        """xdist: each worker uses the controller's cache directory."""
        node.workerinput["jax_cache_dir"] = node.config.jax_cache_dir


# The files that take longest, run first: with two processes, a long file started last
# would leave the other process idle at the end.
LONGEST_FIRST = ("test_train.py", "test_evaluate.py", "test_libmypaint_env.py",
                 "test_discriminator.py", "test_rollout.py", "test_agent.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
