"""When a run stops, agreed by all its processes, and the exit code that says why.

Every process of a multi-process run (a TPU pod slice, several GPU hosts) must stop at
the same step: a checkpoint save is a collective, so a process that saves while another
starts the next step leaves both waiting for ever. Each process therefore turns what it
sees by itself (SIGTERM or Ctrl-C, its own clock passing `max_minutes`, a failure) into
bits of a small integer, and before every step the processes OR their bits together
(`jax.experimental.multihost_utils.process_allgather`, a few bytes); all of them then
act on the same bits at the same step. One process costs nothing: no collective runs.

Exit codes of `python -m experiments.train` (README lists them too):

    0   finished: `num_train_steps` reached
    75  stopped early and resumable: SIGTERM / Ctrl-C or `--max_minutes` (EX_TEMPFAIL:
        rerun the same command to continue)
    2   bad input: a config, flag or workdir that cannot train (nothing compiled)
    1   failure: non-finite updates in a row, a checkpoint that cannot be written, a
        crash (the last good checkpoint is kept)
"""

from __future__ import annotations

import enum
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_FINISHED = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 75


class Stop(enum.IntFlag):
    """Why a process wants to stop; the agreed value is the OR over processes."""

    NONE = 0
    SIGNAL = 1  # SIGTERM or Ctrl-C: save and exit, resumable
    DEADLINE = 2  # --max_minutes passed: save and exit, resumable
    FAILURE = 4  # this process failed: exit without saving over the last good checkpoint


class TrainingFailure(RuntimeError):
    """A run that cannot go on (its message is one line, for the user); the last good
    checkpoint is kept."""


class StopRequests:
    """Collects this process's reasons to stop: the first Ctrl-C (SIGINT) or SIGTERM
    asks for a stop after the current step, so that a consistent state is saved (the
    step donates its input state, so an exception in the middle of it would leave
    nothing to save); a second Ctrl-C interrupts at once. `max_minutes` > 0 asks for a
    stop once that many minutes have passed since `t_start` (a `time.perf_counter()`
    value; default now). Use as a context manager: it restores the previous signal
    handlers on exit."""

    def __init__(self, max_minutes: float = 0.0, t_start: float | None = None):
        self.max_minutes = max_minutes
        t_start = time.perf_counter() if t_start is None else t_start
        self.deadline = t_start + 60.0 * max_minutes if max_minutes > 0 else None
        self.signalled = False
        self.failure: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signalled = True

    def fail(self, message: str) -> None:
        """Records this process's failure (the first one's message is kept)."""
        if self.failure is None:
            self.failure = message

    def local(self) -> Stop:
        """What this process alone would do now."""
        flags = Stop.NONE
        if self.signalled:
            flags |= Stop.SIGNAL
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            flags |= Stop.DEADLINE
        if self.failure is not None:
            flags |= Stop.FAILURE
        return flags

    def agreed(self) -> Stop:
        """The OR of every process's `local()`: the same value on all of them."""
        return agree(self.local())


class LostProcess(TrainingFailure):
    """Another process is gone (killed, its host lost): this one stops at once, without
    the collective clean-up that would wait for the lost process."""


def agree(flags: Stop) -> Stop:
    """The OR of `flags` over all processes (a collective: every process must call it
    at the same point); with one process, `flags` itself. Raises LostProcess if the
    collective fails because a process is gone."""
    if jax.process_count() == 1:
        return flags
    try:
        gathered = multihost_utils.process_allgather(np.asarray(int(flags), np.int32))
    except Exception as e:  # noqa: BLE001 - gloo / the runtime says a peer is gone
        cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LostProcess(f"lost another process ({cause}): stopping without saving; "
                          "rerun every process to resume from the last checkpoint") from e
    return Stop(int(np.bitwise_or.reduce(np.asarray(gathered).reshape(-1))))
