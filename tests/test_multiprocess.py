"""Two processes on 127.0.0.1 (CPU, gloo), as on a pod: the same metrics as one process
with two devices, and stops that both processes agree on (SIGTERM to one of them, a
time limit on one of them), each saving the same checkpoint and resuming. Slow: every
launch compiles the train step in each process."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=small", "--config.max_examples=256", "--config.log_every=1",
        "--config.sample_every=1000", "--config.checkpoint_every=1000",
        "--config.disc_learner.updates_per_step=1"]
EXIT_STOPPED = 75

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A compilation cache shared by this module's launches."""
    return tmp_path_factory.mktemp("jax_cache")


def _env(cache_dir, devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(workdir, cache_dir, *extra, per_process=((), ())):
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *ARGS, *extra,
             "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}", *per_process[i]],
            env=_env(cache_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _finish(procs, timeout):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


def _records(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpoint_steps(workdir) -> list[int]:
    folder = pathlib.Path(workdir) / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _describe(outs) -> str:
    return "\n".join(f"rc={rc}\n{out[-1500:]}\n{err[-2500:]}" for rc, out, err in outs)


def _run_one_process(workdir, cache_dir, *extra) -> None:
    """The same run as one process with two devices."""
    one = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *ARGS, *extra],
        env=_env(cache_dir, devices=2), cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert one.returncode == 0, one.stderr[-3000:]


def _assert_same_records(two_workdir, one_workdir) -> list[dict]:
    """The two runs logged the same steps and keys, with values equal to float noise
    (timings aside); returns the two-process run's records."""
    two_records, one_records = _records(two_workdir), _records(one_workdir)
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records]
    for a, b in zip(two_records, one_records, strict=True):
        assert set(a) == set(b)
        for k in set(a) - {"minutes", "frames_per_second"}:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)
    return two_records


def test_two_processes_equal_one_process_with_two_devices(tmp_path, cache_dir):
    steps = ["--config.num_train_steps=3"]
    outs = _finish(_launch_two(tmp_path / "two", cache_dir, *steps), timeout=900)
    assert [rc for rc, _, _ in outs] == [0, 0], _describe(outs)
    # Each process read only the images its device holds.
    assert "process 0 reads training images 0-128 of 256" in outs[0][1]
    assert "process 1 reads training images 128-256 of 256" in outs[1][1]
    _run_one_process(tmp_path / "one", cache_dir, *steps)
    records = _assert_same_records(tmp_path / "two", tmp_path / "one")
    assert [r["step"] for r in records] == [1, 2, 3]


def test_a_population_split_over_two_processes_equals_one_process(tmp_path, cache_dir):
    """Two members, one on each process's device, with exploit steps on D's score and
    sample grids of the fittest member (gathered from whichever process holds it):
    the same records as one process with two devices."""
    pop = ["--config.num_train_steps=4", "--config.population.size=2",
           "--config.population.exploit_every=2", "--config.sample_every=2"]
    outs = _finish(_launch_two(tmp_path / "two", cache_dir, *pop), timeout=900)
    assert [rc for rc, _, _ in outs] == [0, 0], _describe(outs)
    assert "2 members over 2 device group(s)" in outs[0][1]
    _run_one_process(tmp_path / "one", cache_dir, *pop)
    records = _assert_same_records(tmp_path / "two", tmp_path / "one")
    assert sum("source/m0" in r for r in records) == 2  # exploit steps at 2 and 4


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_they_resume(
        tmp_path, cache_dir):
    procs = _launch_two(tmp_path, cache_dir, "--config.num_train_steps=100000")
    deadline = time.time() + 900
    while not _records(tmp_path) and time.time() < deadline:  # compiled, training
        assert all(p.poll() is None for p in procs), _describe(_finish(procs, 60))
        time.sleep(1)
    procs[1].send_signal(signal.SIGTERM)  # only one of them, as a preempted host
    t_signal = time.time()
    outs = _finish(procs, timeout=120)
    assert time.time() - t_signal < 60
    assert [rc for rc, _, _ in outs] == [EXIT_STOPPED] * 2, _describe(outs)
    (step,) = _checkpoint_steps(tmp_path)
    assert step == max(r["step"] for r in _records(tmp_path))
    for _, out, _ in outs:
        assert f"SIGTERM / Ctrl-C at step {step}: saving a checkpoint" in out

    # The same command resumes, in both processes.
    outs = _finish(_launch_two(tmp_path, cache_dir, f"--config.num_train_steps={step + 2}"),
                   timeout=900)
    assert [rc for rc, _, _ in outs] == [0, 0], _describe(outs)
    assert all(f"resumed from step {step}" in out for _, out, _ in outs)
    assert _checkpoint_steps(tmp_path)[-1] == step + 2


def test_a_time_limit_on_one_process_stops_both(tmp_path, cache_dir):
    procs = _launch_two(tmp_path, cache_dir, "--config.num_train_steps=100000",
                        per_process=((), ("--max_minutes=0.75",)))
    outs = _finish(procs, timeout=900)
    assert [rc for rc, _, _ in outs] == [EXIT_STOPPED] * 2, _describe(outs)
    steps = {int(re.search(r"max_minutes[^\n]* at step (\d+)", out).group(1))
             for _, out, _ in outs}
    assert len(steps) == 1, _describe(outs)  # the same step in both
    (step,) = steps
    # (Compilation may outlast the limit: then both stop before the first step.)
    assert _checkpoint_steps(tmp_path) == ([step] if step else [])


def test_a_lost_process_ends_the_other_at_once_with_one_line(tmp_path, cache_dir):
    procs = _launch_two(tmp_path, cache_dir, "--config.num_train_steps=100000")
    deadline = time.time() + 900
    while not _records(tmp_path) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), _describe(_finish(procs, 60))
        time.sleep(1)
    procs[1].kill()  # SIGKILL: a lost host
    t_kill = time.time()
    rc, out, err = _finish(procs[:1], timeout=120)[0]
    assert time.time() - t_kill < 60
    procs[1].wait()
    assert rc == 1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: lost another process")
