"""Stop requests and their agreement (`spiral_jax.stops`); the multi-process agreement
itself runs in tests/test_multiprocess.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from spiral_jax import stops
from spiral_jax.stops import Stop


def test_nothing_asks_for_a_stop_by_default():
    with stops.StopRequests() as requests:
        assert requests.local() == Stop.NONE and requests.agreed() == Stop.NONE


def test_sigterm_asks_for_a_stop_and_the_handler_is_restored():
    previous = signal.getsignal(signal.SIGTERM)
    with stops.StopRequests() as requests:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert requests.agreed() == Stop.SIGNAL
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_ctrl_c_interrupts_at_once():
    with stops.StopRequests() as requests:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert requests.local() == Stop.SIGNAL
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)


def test_the_deadline_counts_from_the_given_start():
    assert stops.StopRequests(1.0, t_start=time.perf_counter() - 61).local() == Stop.DEADLINE
    assert stops.StopRequests(1.0).local() == Stop.NONE
    assert stops.StopRequests(0.0, t_start=0.0).local() == Stop.NONE  # 0 = no limit


def test_reasons_combine_and_the_first_failure_is_kept():
    requests = stops.StopRequests(1e-9, t_start=0.0)
    requests.fail("first")
    requests.fail("second")
    assert requests.local() == Stop.DEADLINE | Stop.FAILURE and requests.failure == "first"
    assert stops.agree(Stop.SIGNAL | Stop.FAILURE) == Stop.SIGNAL | Stop.FAILURE
