"""Names shared by the environments, the networks and the learner, defined once."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

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
