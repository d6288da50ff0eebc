r"""Tries every fault and bad input on a small run and prints what the user sees.

    python -m experiments.fault_drill --out=/tmp/drill.md

Each case runs `python -m experiments.train --config=small` in a subprocess (a shared
compilation cache keeps reruns short) and reports its exit code, seconds, whether a
Python traceback was printed, and the lines that say what happened. The table in
docs/robustness.md is this script's output.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = ["--config=small", "--config.max_examples=256", "--config.checkpoint_every=2",
        "--config.sample_every=1000"]
KEYWORDS = ("error:", "checkpoint", "resumed", "stopped", "saving", "config changes",
            "SIGTERM", "max_minutes", "done:", "non-finite")


def _env(cache: pathlib.Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _train(workdir, *args: str, cache: pathlib.Path, prefix: str = "",
           signal_after: float | None = None) -> dict:
    """Runs experiments.train; with `signal_after`, sends SIGTERM once the first metrics
    line is written plus that many seconds. `prefix`: a shell prefix (e.g. ulimit)."""
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *BASE, *args]
    if prefix:
        cmd = ["bash", "-c", f"{prefix}; exec " + " ".join(cmd)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=_env(cache), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if signal_after is not None:
        metrics = pathlib.Path(workdir) / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.5)
        time.sleep(signal_after)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=1800)
    lines = [line.strip() for line in (out + "\n" + err).replace("\r", "\n").splitlines()]
    said = [line for line in lines if any(k in line for k in KEYWORDS)
            and not line.startswith(("W", "I"))]
    return {"rc": proc.returncode, "seconds": time.time() - t0,
            "traceback": "Traceback (most recent call last)" in err, "said": said}


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _overwrite(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes((b + 1) % 256 for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _newest(workdir: pathlib.Path) -> pathlib.Path:
    steps = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    return max(steps, key=lambda p: int(p.name))


def cases(root: pathlib.Path) -> list[tuple[str, Callable[[pathlib.Path], dict]]]:
    """(what is tried, how) for every case; `how` gets the cache directory."""
    trained = root / "trained"  # a run with checkpoints at steps 2 and 4

    def fresh(name: str) -> pathlib.Path:
        path = root / name
        shutil.copytree(trained, path)
        return path

    def resume_after(damage: Callable[[pathlib.Path], None]):
        def run(cache):
            path = fresh(damage.__name__)
            damage(_largest_file(_newest(path)))
            return _train(path, "--config.num_train_steps=5", cache=cache)
        return run

    file = root / "a_file"
    file.write_text("not a directory")
    return [
        ("a run to the end (4 steps)",
         lambda cache: _train(trained, "--config.num_train_steps=4", cache=cache)),
        ("resume it for 2 more steps",
         lambda cache: _train(fresh("more"), "--config.num_train_steps=6", cache=cache)),
        ("SIGTERM while training",
         lambda cache: _train(root / "sigterm", "--config.num_train_steps=100000",
                              cache=cache, signal_after=2.0)),
        ("`--max_minutes=0.5`",
         lambda cache: _train(root / "minutes", "--config.num_train_steps=100000",
                              "--max_minutes=0.5", cache=cache)),
        ("newest checkpoint truncated", resume_after(_truncate)),
        ("newest checkpoint's bytes overwritten in place", resume_after(_overwrite)),
        ("disk full (file size limit 150 KB) at the first checkpoint",
         lambda cache: _train(root / "full", "--config.num_train_steps=6", cache=cache,
                              prefix="trap '' XFSZ; ulimit -f 150")),
        ("resume with a changed learning rate",
         lambda cache: _train(fresh("lr"), "--config.learner.learning_rate=0.001",
                              "--config.num_train_steps=6", cache=cache)),
        ("... with `--allow_config_change`",
         lambda cache: _train(fresh("lr_allowed"), "--config.learner.learning_rate=0.001",
                              "--config.num_train_steps=6", "--allow_config_change",
                              cache=cache)),
        ("resume with a changed canvas (shapes) and `--allow_config_change`",
         lambda cache: _train(fresh("canvas"), "--config.env.canvas_width=32",
                              "--config.env.grid_width=16", "--allow_config_change",
                              cache=cache)),
        ("unknown field `--config.nosuch=1`",
         lambda cache: _train(root / "bad", "--config.nosuch=1", cache=cache)),
        ("`--config.checkpoint_every=0`",
         lambda cache: _train(root / "bad", "--config.checkpoint_every=0", cache=cache)),
        ("`--config.log_every=0`",
         lambda cache: _train(root / "bad", "--config.log_every=0", cache=cache)),
        ("`--config.keep_checkpoints=0`",
         lambda cache: _train(root / "bad", "--config.keep_checkpoints=0", cache=cache)),
        ("`--config.num_train_steps=0`",
         lambda cache: _train(root / "bad", "--config.num_train_steps=0", cache=cache)),
        ("negative critic learning rate",
         lambda cache: _train(root / "bad", "--config.disc_learner.learning_rate=-1e-4",
                              cache=cache)),
        ("`--max_minutes=-1`",
         lambda cache: _train(root / "bad", "--max_minutes=-1", cache=cache)),
        ("workdir is a file", lambda cache: _train(file, cache=cache)),
        ("workdir cannot be written (`/proc/run`)",
         lambda cache: _train("/proc/run", cache=cache)),
        ("workdir `gs://bucket/run` without gcsfs",
         lambda cache: _train("gs://bucket/run", cache=cache)),
        ("workdir with an unknown scheme `memory://run`",
         lambda cache: _train("memory://run", cache=cache)),
        ("`--multihost` without a coordinator",
         lambda cache: _train(root / "bad", "--multihost", cache=cache)),
    ]


def main(argv):
    del argv
    root = pathlib.Path(tempfile.mkdtemp(prefix="fault_drill_"))
    cache = root / "cache"
    rows = ["| fault or input | exit | s | traceback | what the user sees |",
            "|---|---|---|---|---|"]
    try:
        for name, run in cases(root):
            result = run(cache)
            lines = [line.replace(str(root), "DIR")[:230] for line in result["said"][-3:]]
            said = "<br>".join(f"`{line}`" for line in lines)
            rows.append(f"| {name} | {result['rc']} | {result['seconds']:.0f} | "
                        f"{'yes' if result['traceback'] else 'no'} | {said} |")
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = "\n".join(rows) + "\n"
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(table)


if __name__ == "__main__":
    app.run(main)
