"""Updates with non-finite gradients are skipped, counted, and end the run if they
persist.

One bad batch (a NaN reward, an overflow in a critic's gradient) should cost one
update, not the run; a learner that only produces NaN should end the run with a
message while its last good checkpoint is intact. optax's `apply_if_finite` does the
first: it leaves the parameters and the inner optimiser state untouched when any
gradient is not finite, and counts such updates (in a row and in total) in its state,
which is checkpointed with the rest. The loop (`spiral_jax.train`) does the second by
reading `in_a_row` after every step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from spiral_jax.types import Array

# apply_if_finite applies even a non-finite update once this many were skipped in a row;
# the loop stops long before (config.max_nonfinite_in_a_row), so never.
_NEVER = 2**30


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, skipping (zero update, state unchanged) updates whose gradients are not
    all finite."""
    return optax.apply_if_finite(inner, max_consecutive_errors=_NEVER)


def counts(opt_state: Any) -> tuple[Array, Array]:
    """(skipped updates in a row, skipped updates in total) of a `skip_nonfinite` state."""
    return opt_state.notfinite_count, opt_state.total_notfinite


def unchanged_if_skipped(new: Any, old: Any, before: Any, after: Any) -> Any:
    """`new`, or `old` where the optimiser skipped an update between its states `before`
    and `after` (for what is derived from the parameters, such as their average)."""
    skipped = counts(after)[1] > counts(before)[1]
    return jax.tree.map(lambda o, n: jnp.where(skipped, o, n), old, new)
