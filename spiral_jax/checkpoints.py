"""A run's orbax checkpoints: the latest few, the best by in-training sample quality,
and restoring a `TrainState` from either (including ones written by older versions)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from spiral_jax.experiment import TrainState

CHECKPOINTS = "checkpoints"  # <workdir>/checkpoints/<step>: the latest `keep_checkpoints`
# <workdir>/best_checkpoints/<step>: the one with the lowest in-training Fréchet distance.
BEST_CHECKPOINTS = "best_checkpoints"
FOLDERS = (CHECKPOINTS, BEST_CHECKPOINTS)

# Fields added to TrainState after checkpoints were first written, with the value that
# means "not kept": a checkpoint without the field restores it as that value.
_ADDED_FIELDS = {"policy_ema": None}


def manager(workdir: Any, keep: int) -> ocp.CheckpointManager:
    """Saves asynchronously to <workdir>/checkpoints, keeping the latest `keep`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(_absolute(workdir) / CHECKPOINTS, options=options)


def best_manager(workdir: Any) -> ocp.CheckpointManager:
    """Keeps the one checkpoint with the lowest `frechet_train` metric."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m["frechet_train"], best_mode="min",
        keep_checkpoints_without_metrics=False, enable_async_checkpointing=True, create=True,
    )
    return ocp.CheckpointManager(_absolute(workdir) / BEST_CHECKPOINTS, options=options)


def reader(workdir: Any, folder: str = CHECKPOINTS) -> ocp.CheckpointManager:
    """A manager that only reads <workdir>/<folder>."""
    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(_absolute(workdir) / folder, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState, **kwargs: Any) -> None:
    mngr.save(step, args=ocp.args.StandardSave(state), **kwargs)


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


def _absolute(workdir: Any) -> Any:
    """Orbax wants absolute paths; cloud paths (gs://...) already are."""
    path = epath.Path(workdir)
    return path if "://" in str(workdir) else epath.Path(path.resolve())
