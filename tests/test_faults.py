"""Faults from outside, through the command line: SIGKILL at any moment resumes bit for
bit, and a full disk stops the run with one line. Slow: each launch compiles."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from spiral_jax import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=small", "--config.max_examples=256", "--config.log_every=1",
        "--config.checkpoint_every=2", "--config.sample_every=1000",
        "--config.num_train_steps=6"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def _cmd(workdir) -> list[str]:
    return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *ARGS]


def _env(cache_dir) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _last_records(workdir) -> dict[int, dict]:
    """The last record of each step (a killed run logs some steps twice)."""
    records = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # cut short by the kill
            continue
        records[record["step"]] = record
    return records


def _final_state(workdir):
    mngr = checkpoints.reader(workdir)
    step = mngr.latest_step()
    state = mngr.restore(step)
    mngr.close()
    return step, state


@pytest.mark.parametrize("after_seconds", [0.0, 1.5])
def test_sigkill_at_any_moment_resumes_bit_for_bit(tmp_path, cache_dir, after_seconds):
    whole = subprocess.run(_cmd(tmp_path / "whole"), env=_env(cache_dir), cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed), env=_env(cache_dir), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Once the first checkpoint is on its way, then a little later (mid-step or mid-save).
    while proc.poll() is None and not (killed / "checkpoints" / "2").exists():
        time.sleep(0.05)
    time.sleep(after_seconds)
    proc.kill()
    proc.wait()
    resumed = subprocess.run(_cmd(killed), env=_env(cache_dir), cwd=REPO,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout

    a, b = _last_records(tmp_path / "whole"), _last_records(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for k in set(a[step]) - {"minutes", "frames_per_second"}:
            assert a[step][k] == b[step][k], (step, k)
    (step_a, state_a), (step_b, state_b) = _final_state(tmp_path / "whole"), _final_state(killed)
    assert step_a == step_b == 6
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 100
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_full_disk_stops_the_run_with_one_line_and_exit_code_1(tmp_path, cache_dir):
    # A 150 KB file-size limit: metrics and TensorBoard fit, a checkpoint's arrays do not
    # (as a full disk would make them fail); SIGXFSZ ignored, so writes fail with EFBIG.
    cmd = "trap '' XFSZ; ulimit -f 150; exec " + " ".join(_cmd(tmp_path))
    out = subprocess.run(["bash", "-c", cmd], env=_env(cache_dir), cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "checkpoint" in last and "failed" in last
    # It stopped at the next step, not at the end.
    steps = sorted(_last_records(tmp_path))
    assert steps[-1] < 6
