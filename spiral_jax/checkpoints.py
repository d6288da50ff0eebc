"""Restoring a `TrainState` from an orbax checkpoint, including older ones."""

from __future__ import annotations

import dataclasses

import jax
import orbax.checkpoint as ocp

from spiral_jax.train import TrainState

# Fields added to TrainState after checkpoints were first written, with the value that
# means "not kept": a checkpoint without the field restores it as that value.
_ADDED_FIELDS = {"policy_ema": None}


def restore_state(mngr: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    """The state saved at `step`, with the shapes, dtypes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as error:
        absent = {k: v for k, v in _ADDED_FIELDS.items() if getattr(like, k) is v}
        if not absent:
            raise
        # Written before these fields existed: restore the others by name.
        target = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
                  if f.name not in absent}
        try:
            restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
        except ValueError:
            raise error from None
        return TrainState(**restored, **absent)
