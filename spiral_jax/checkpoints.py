"""A run's orbax checkpoints: saving only finite states with their checksums, and
restoring the newest one that verifies.

Every checkpoint carries the checksums of its leaves (`spiral_jax.checksums`) in orbax's
step metadata, written in the same atomic commit as the arrays. Resuming
(`restore_latest`) restores the newest checkpoint and recomputes them; a checkpoint
that cannot be read, does not match its checksums or holds a NaN is reported in one
line and moved aside to `<workdir>/corrupt_checkpoints/` (never deleted), and the one
before it is tried. A checkpoint whose arrays have other shapes than the run's is not
corrupt but from another config: that refuses to resume (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from spiral_jax import checksums
from spiral_jax.experiment import ConfigError, TrainState
from spiral_jax.stops import TrainingFailure

CHECKPOINTS = "checkpoints"  # <workdir>/checkpoints/<step>: the latest `keep_checkpoints`
# <workdir>/best_checkpoints/<step>: the one with the lowest in-training Fréchet distance.
BEST_CHECKPOINTS = "best_checkpoints"
FOLDERS = (CHECKPOINTS, BEST_CHECKPOINTS)
CORRUPT = "corrupt_checkpoints"  # where checkpoints that fail to verify are moved

# Fields added to TrainState after checkpoints were first written, in the order they
# were added, with the value that means "not kept": a checkpoint without the field
# restores it as that value.
_ADDED_FIELDS = {"policy_ema": None, "members": None}


def manager(workdir: Any, keep: int) -> ocp.CheckpointManager:
    """Saves asynchronously to <workdir>/checkpoints, keeping the latest `keep` (>= 1)."""
    if not keep >= 1:
        raise ValueError(f"keep_checkpoints={keep!r} must be >= 1")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(_absolute(workdir) / CHECKPOINTS, options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def best_manager(workdir: Any) -> ocp.CheckpointManager:
    """Keeps the one checkpoint with the lowest `frechet_train` metric."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m["frechet_train"], best_mode="min",
        keep_checkpoints_without_metrics=False, enable_async_checkpointing=True, create=True,
    )
    return ocp.CheckpointManager(_absolute(workdir) / BEST_CHECKPOINTS, options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def reader(workdir: Any, folder: str = CHECKPOINTS) -> ocp.CheckpointManager:
    """A manager that only reads <workdir>/<folder>."""
    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(_absolute(workdir) / folder, options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState, **kwargs: Any) -> None:
    """Starts an asynchronous save of `state` with its checksums. Raises TrainingFailure
    (and saves nothing) if the state holds a NaN or an infinity, or if the previous
    asynchronous save failed (a full disk, lost permissions)."""
    sums, nonfinite = checksums.inspect(state)
    if nonfinite:
        raise TrainingFailure(
            f"the state at step {step} holds non-finite values ({_few(nonfinite)}): "
            "not saved; the last checkpoint is kept"
        )
    check_saves(mngr)
    _check_space(mngr, step, state)
    try:
        mngr.save(step, args=ocp.args.StandardSave(state),
                  custom_metadata={"checksums": sums}, **kwargs)
    except Exception as e:  # noqa: BLE001 - any storage error ends the run the same way
        raise TrainingFailure(f"a checkpoint save in {mngr.directory} failed: "
                              f"{_one_line(e)}") from e


def _check_space(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """TrainingFailure, before writing anything, if a local disk lacks the room for the
    checkpoint (its arrays' bytes, plus a tenth); buckets are not checked."""
    directory = str(mngr.directory)
    if "://" in directory:
        return
    needed = 1.1 * sum(x.nbytes for x in jax.tree.leaves(state))
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise TrainingFailure(
            f"no room for checkpoint {step} in {directory}: it needs about "
            f"{needed / 1e6:.0f} MB, {free / 1e6:.0f} MB are free"
        )


def check_saves(mngr: ocp.CheckpointManager) -> None:
    """TrainingFailure if an asynchronous save has failed since the last call."""
    try:
        mngr.check_for_errors()
    except Exception as e:  # noqa: BLE001
        raise TrainingFailure(f"a checkpoint save in {mngr.directory} failed: "
                              f"{_one_line(e)}") from e


def finish(mngr: ocp.CheckpointManager) -> None:
    """Waits for the last asynchronous save and closes `mngr`; TrainingFailure if a save
    failed."""
    try:
        mngr.wait_until_finished()
        check_saves(mngr)
    except TrainingFailure:
        raise
    except Exception as e:  # noqa: BLE001
        raise TrainingFailure(f"a checkpoint save in {mngr.directory} failed: "
                              f"{_one_line(e)}") from e
    finally:
        mngr.close()


def restore_latest(mngr: ocp.CheckpointManager, like: TrainState, workdir: Any,
                   ) -> TrainState | None:
    """The newest checkpoint that restores and verifies, with the shapes, dtypes and
    shardings of `like`; None if there is none. Checkpoints that fail are moved aside
    (every process must call this: the processes agree on each verdict)."""
    for step in sorted(mngr.all_steps(), reverse=True):
        _check_layout(mngr, step, like)
        try:
            state = restore_state(mngr, step, like)
            problem = verify(mngr, step, state)
        except Exception as e:  # noqa: BLE001 - any unreadable file means corrupt
            problem = f"cannot be read: {_one_line(e)}"
        if not _all_agree(problem is None):
            problem = problem or "another process could not verify it"
            aside = _move_aside(mngr, step, workdir)
            print(f"checkpoint {mngr.directory / str(step)} {problem}; moved to {aside}, "
                  "trying the previous one")
            continue
        return state
    return None


def verify(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> str | None:
    """None if `state` (restored from `step`) matches the checksums saved with it and is
    finite; else what is wrong. Checkpoints from before checksums are only checked for
    NaNs and infinities."""
    actual, nonfinite = checksums.inspect(state)
    if nonfinite:
        return f"holds non-finite values ({_few(nonfinite)})"
    custom = mngr.metadata(step).custom_metadata or {}
    expected = custom.get("checksums")
    if expected is not None:
        bad = checksums.mismatches(expected, actual)
        if bad:
            return f"does not match its checksums ({_few(bad)})"
    return None


def restore_state(mngr: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    """The state saved at `step`, with the shapes, dtypes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as error:
        absent = {k: v for k, v in _ADDED_FIELDS.items() if getattr(like, k) is v}
        if not absent:
            raise
        # Written before some of these fields existed: restore the others by name,
        # trying the fields added last first (a checkpoint lacks a suffix of them).
        names = list(absent)
        for k in range(len(names) - 1, -1, -1):
            missing = {n: absent[n] for n in names[k:]}
            target = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
                      if f.name not in missing}
            try:
                restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
            except ValueError:
                continue
            return TrainState(**restored, **missing)
        raise error from None


def _check_layout(mngr: ocp.CheckpointManager, step: int, like: TrainState) -> None:
    """ConfigError if the checkpoint's arrays (by its metadata) are not the run's: other
    names or other shapes mean another config (or version) wrote it, not corruption.
    Unreadable metadata is left to the restore, which then reports it as corrupt."""
    try:
        saved = {_key(p): tuple(m.shape) for p, m in
                 jax.tree_util.tree_leaves_with_path(mngr.item_metadata(step))}
    except Exception:  # noqa: BLE001
        return
    wanted = {_key(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(like)}
    where = f"checkpoint {mngr.directory / str(step)} was written by another config or version"
    advice = "resume with the config in config.json, or use a new --workdir"
    if set(saved) != set(wanted):
        only_saved, only_here = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
        raise ConfigError(
            f"{where} (only in the checkpoint: {_few(only_saved) or 'none'}; only in this "
            f"config: {_few(only_here) or 'none'}): {advice}"
        )
    differ = [k for k in wanted if saved[k] != wanted[k]]
    if differ:
        k = differ[0]
        raise ConfigError(f"{where}, with other shapes ({k}: {saved[k]} there, {wanted[k]} "
                          f"now; {len(differ)} arrays differ): {advice}")


def _key(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path)


def _all_agree(ok: bool) -> bool:
    """True if `ok` on every process (a collective with several processes)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _move_aside(mngr: ocp.CheckpointManager, step: int, workdir: Any) -> epath.Path:
    """Moves checkpoint `step` to <workdir>/corrupt_checkpoints/<step>[-k] (process 0
    moves; the others wait), and makes `mngr` forget it."""
    folder = _absolute(workdir) / CORRUPT
    target = folder / str(step)
    k = 1
    while target.exists():
        k += 1
        target = folder / f"{step}-{k}"
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"move checkpoint {step} aside")
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (mngr.directory / str(step)).rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"moved checkpoint {step} aside")
    mngr.reload()
    return target


def _one_line(error: BaseException) -> str:
    """The first line of an error's message, at most about 200 characters: its start and
    its end (where tensorstore puts the cause, e.g. "No space left on device")."""
    text = str(error).strip().splitlines()
    line = text[0].split(" See full TensorStore details")[0] if text else ""
    if len(line) < 40:  # e.g. a KeyError's bare key: say what kind of error it is
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= 200 else f"{line[:90]} ... {line[-105:]}"


def _few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _absolute(workdir: Any) -> Any:
    """Orbax wants absolute paths; cloud paths (gs://...) already are."""
    path = epath.Path(workdir)
    return path if "://" in str(workdir) else epath.Path(path.resolve())
