"""Names and checks shared by the environments, the networks and the learners."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# dm_env step types: the first observation of an episode, the ones in between, the last.
FIRST, MID, LAST = 0, 1, 2

# Compute dtypes of the networks (parameters stay float32), by config name.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_compute_dtype(name: str, what: str = "compute_dtype") -> Any:
    """The dtype called `name`; ValueError naming the allowed ones otherwise."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"{what}={name!r}; allowed: {tuple(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def cast_floating(tree: Any, dtype: Any) -> Any:
    """A copy of `tree` whose floating leaves are in `dtype` (for compute precision)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def is_int(x: Any) -> bool:
    """An integer (numpy's too) that is not a bool: what size fields accept."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """A real number that is not a bool: what weight and rate fields accept."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_adam(section: str, learning_rate: Any, b1: Any, b2: Any, eps: Any) -> None:
    """One-line ValueErrors for Adam's settings in config section `section`."""
    for name, value, ok, allowed in (
        ("learning_rate", learning_rate, lambda v: v > 0, "> 0"),
        ("b1", b1, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("b2", b2, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("eps", eps, lambda v: v > 0, "> 0"),
    ):
        if not is_number(value) or not ok(value):
            raise ValueError(f"{section}.{name}={value!r}: must be a number {allowed}")
