r"""python -m experiments.bench_commits --old=9c8d88f --configs=mnist5k

The train step's speed at an older commit against this checkout (its working tree), in
one run, step by step in turn. An export of the old commit (`git archive`) and this
checkout each build the config's train step in a process of their own (one device)
and compile it; then the two processes take turns, one train step each, --steps times,
while the other waits. A shared 2-core VM's speed drifts by 10-20 % over minutes, and
runs of whole processes one after the other caught that drift as often as the code's
difference (the ratio of two such runs moved between 1.25x and 1.63x); steps taken in
turn see the same machine. Each side's figure is its median step (frames/s); the
ratio's spread is that of the medians of the first and second halves of the steps.

    python -m experiments.bench_commits --old=HEAD~1 --configs=mnist5k,small --steps=40
    python -m experiments.bench_commits --old=HEAD --new_env=GLIBC_TUNABLES=glibc.malloc.hugetlb=1

The second form compares the same code with and without an environment setting, given
to this checkout's process only.

`paper` is SPIRAL's network on a 64x64 canvas (as in `bench_train`, --paper_batch).
Needs git and the repository's history; the old commit needs `experiment.build`,
`TrainState` and `train_step.make_train_step` as they have been since 9c8d88f.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags

_OLD = flags.DEFINE_string("old", None, "The commit to compare with (any git revision).",
                           required=True)
_CONFIGS = flags.DEFINE_list("configs", ["mnist5k"], "Configs in experiments/configs, or paper.")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed train steps per side (after compiling).")
_PAPER_BATCH = flags.DEFINE_integer("paper_batch", 16, "Batch of the paper-sized config.")
_NEW_ENV = flags.DEFINE_list(
    "new_env", [], "NAME=VALUE settings for this checkout's process only: with --old=HEAD, "
    "an A/B of the environment (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, say).")

_ROOT = Path(__file__).resolve().parents[1]

# Run in each tree with its own code: builds and compiles the step, says "ready", then
# takes one timed step per line read and answers with its seconds.
_CHILD = r"""
import importlib, json, sys, time
import jax
from experiments.configs import mnist
from spiral_jax import experiment, train_step
name, paper_batch = sys.argv[1], int(sys.argv[2])
if name == "paper":
    config = mnist.get_config()
    config.dataset = "mnist5k"
    config.max_examples = 1000
    config.batch_size = paper_batch
else:
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
exp = experiment.build(config)
state = exp.init_state(jax.random.PRNGKey(0))
step = train_step.make_train_step(exp)
state, metrics = step(state, jax.random.PRNGKey(0))
jax.block_until_ready(metrics)
print(json.dumps({"frames_per_step": exp.frames_per_step()}), flush=True)
for i, _ in enumerate(sys.stdin):
    start = time.perf_counter()
    state, metrics = step(state, jax.random.PRNGKey(i + 1))
    jax.block_until_ready(metrics)
    print(time.perf_counter() - start, flush=True)
"""


def export_commit(revision: str, into: Path) -> str:
    """Writes `revision`'s tree into `into`/tree and returns its short hash."""
    def git(*args: str) -> bytes:
        out = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"--old={revision!r}: git {' '.join(args)} failed: "
                             f"{out.stderr.decode().strip()}")
        return out.stdout

    short = git("rev-parse", "--short", f"{revision}^{{commit}}").decode().strip()
    archive = into / "tree.tar"
    archive.write_bytes(git("archive", "--format=tar", short))
    with tarfile.open(archive) as tar:
        # The "data" filter (Python 3.11.4 and later) refuses links out of the tree.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into / "tree", **safe)
    return short


class StepProcess:
    """A child process holding one tree's compiled train step for `config`."""

    def __init__(self, tree: Path, config: str, paper_batch: int,
                 extra_env: dict[str, str] | None = None):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(extra_env or {})
        self.tree = tree
        # stderr to a file: JAX's logging could fill a pipe and block the child.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, config, str(paper_batch)], cwd=tree, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"the train step in {self.tree} failed:\n"
                               f"{self.stderr.read()[-3000:]}")
        return line

    def ready(self) -> int:
        """Waits for the compiled step; returns its frames per step."""
        return int(json.loads(self._line())["frames_per_step"])

    def step(self) -> float:
        """One train step's seconds."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.stderr.close()


def compare(trees: dict[str, Path], config: str, steps: int, paper_batch: int,
            envs: dict[str, dict[str, str]] | None = None
            ) -> dict[str, tuple[float, list[float]]]:
    """{name: (frames per step, each step's seconds)}, the trees' steps taken in turn,
    each tree's process with `envs[name]` added to this one's environment. The processes
    compile one after the other, so each gets the whole CPU."""
    procs: dict[str, StepProcess] = {}
    frames: dict[str, int] = {}
    try:
        for name, tree in trees.items():
            procs[name] = StepProcess(tree, config, paper_batch, (envs or {}).get(name))
            frames[name] = procs[name].ready()
        seconds: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(steps):
            for name, proc in procs.items():
                seconds[name].append(proc.step())
    finally:
        for proc in procs.values():
            proc.close()
    return {name: (frames[name], seconds[name]) for name in trees}


def median_fps(frames: float, seconds: list[float]) -> float:
    return frames / float(np.median(seconds))


def parse_env(settings: list[str]) -> dict[str, str]:
    """{NAME: VALUE} from NAME=VALUE strings; a one-line error for anything else."""
    env = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SystemExit(f"--new_env={setting!r}: must be NAME=VALUE")
        env[name] = value
    return env


def main(argv: list[str]) -> None:
    del argv
    if _STEPS.value < 2:
        raise SystemExit(f"--steps={_STEPS.value}: must be >= 2")
    new_env = parse_env(_NEW_ENV.value)
    with tempfile.TemporaryDirectory() as tmp:
        old = export_commit(_OLD.value, Path(tmp))
        trees = {old: Path(tmp) / "tree", "this checkout": _ROOT}
        print(f"{os.cpu_count()} CPU cores; one device; {_STEPS.value} train steps of each,"
              f" {old}'s and this checkout's in turn; median step"
              + "".join(f"; this checkout with {k}={v}" for k, v in new_env.items()))
        print(f"| config | frames/step | frames/s, {old} | frames/s, this checkout | ratio "
              "| ratio, first and second half |")
        print("|---|---|---|---|---|---|")
        for config in _CONFIGS.value:
            runs = compare(trees, config, _STEPS.value, _PAPER_BATCH.value,
                           {"this checkout": new_env})
            (f_old, s_old), (f_new, s_new) = runs[old], runs["this checkout"]
            half = len(s_old) // 2
            halves = [median_fps(f_new, s_new[a:b]) / median_fps(f_old, s_old[a:b])
                      for a, b in ((0, half), (half, None))]
            frames = f_new if f_new == f_old else f"{f_old} / {f_new}"
            print(f"| {config} | {frames} | {median_fps(f_old, s_old):,.0f} | "
                  f"{median_fps(f_new, s_new):,.0f} | "
                  f"{median_fps(f_new, s_new) / median_fps(f_old, s_old):.2f}x | "
                  f"{halves[0]:.2f}x, {halves[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    app.run(main)
