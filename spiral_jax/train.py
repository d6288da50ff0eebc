"""The whole training run: `train_and_evaluate(config, workdir)`.

It builds the run from the config (`spiral_jax.experiment`), resumes from the latest
checkpoint in `workdir` if there is one, and loops `train_step` (`spiral_jax.train_step`)
until `config.num_train_steps`, `max_minutes`, or Ctrl-C / SIGTERM. Along the way it
writes to `workdir`:

* `metrics.jsonl` and `tensorboard/`: every `log_every` steps, the step's metrics and
  frames per second; with `eval_every`, the in-training Fréchet distance;
* `samples/`: real images once, and a grid of samples every `sample_every` steps
  (conditional runs: (target, painting) pairs for fixed targets);
* `checkpoints/<step>`: every `checkpoint_every` steps, at the end and when stopped
  (the latest `keep_checkpoints`); `best_checkpoints/<step>`: the lowest Fréchet
  distance so far;
* `config.json`: the config, for `spiral_jax.evaluate`.

Step t's PRNG key is `fold_in(PRNGKey(config.seed), t)`, so a resumed run draws the
randomness it would have drawn uninterrupted.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from spiral_jax import checkpoints, experiment, pictures, train_step
from spiral_jax.experiment import Experiment, TrainState
from spiral_jax.image_grid import make_grid
from spiral_jax.run_log import RunLog
from spiral_jax.sample_quality import FrechetToTrainingDigits, check_eval_config

NUM_SAMPLES = 16  # paintings in each samples/step_*.png


class GracefulStop:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current
    step, so that a consistent state is saved (the step donates its input state, so
    an exception in the middle of it would leave nothing to save). A second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def restore_or_init(exp: Experiment, mngr: Any) -> TrainState:
    """The latest checkpoint's state, or a fresh one from `config.seed`."""
    state = exp.init_state(jax.random.PRNGKey(exp.config.seed))
    latest = mngr.latest_step()
    if latest is None:
        return state
    print(f"resumed from step {latest} ({mngr.directory})")
    return checkpoints.restore_state(mngr, latest, state)


def write_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists() and path.read_text() != text:
        logging.warning("config differs from the one in %s; the new one is used", path)
    path.write_text(text)


def sample_grid(exp: Experiment, params: Any, key: Any, targets: Any = None) -> np.ndarray:
    """A uint8 grid of NUM_SAMPLES paintings; with targets, (target, painting) pairs."""
    canvases = np.asarray(exp.sampler(NUM_SAMPLES)(params, key, targets).final_canvas)
    return pictures.sample_grid(canvases, None if targets is None else np.asarray(targets))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | epath.PathLike, max_minutes: float = 0.0
) -> TrainState:
    """Trains (or resumes) the run of `config` in `workdir`; returns the last state.

    `max_minutes` > 0 stops (and saves) once that many minutes have passed since the
    call, setup and compilation included. Raises ConfigError (a ValueError) for a config that
    cannot train, before anything compiles.
    """
    t_start = time.perf_counter()
    evaluates = check_eval_config(config)
    exp = experiment.build(config)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mngr = checkpoints.manager(workdir, config.keep_checkpoints)
    state = restore_or_init(exp, mngr)
    if jax.process_index() == 0:
        write_config(workdir, config)
    step = int(state.step)
    print(f"training {config.dataset} on {exp.num_devices} device(s) "
          f"({jax.devices()[0].platform}), batch {config.batch_size}, "
          f"{exp.frames_per_step()} frames/step, workdir {workdir}")
    out = Outputs(exp, workdir, step, FrechetToTrainingDigits(exp) if evaluates else None)
    step_fn = train_step.make_train_step(exp)
    root_key = jax.random.PRNGKey(config.seed)
    stop = GracefulStop()
    deadline = t_start + 60.0 * max_minutes if max_minutes > 0 else None

    def is_due(every: int) -> bool:
        return step % every == 0 or step == config.num_train_steps

    try:
        while step < config.num_train_steps and not stop.requested:
            if deadline is not None and time.perf_counter() >= deadline:
                print(f"\n--max_minutes={max_minutes:g} reached at step {step}")
                break
            state, metrics = step_fn(state, jax.random.fold_in(root_key, step))
            step += 1
            out.bar.update(1)
            if is_due(config.log_every):
                out.log_metrics(step, metrics)
            if out.frechet is not None and is_due(config.eval_every):
                out.frechet_distance(step, state)
            if is_due(config.sample_every):
                out.samples(step, state)
            if is_due(config.checkpoint_every):
                checkpoints.save(mngr, step, state)
        if stop.requested:
            print(f"\ninterrupted at step {step}: saving a checkpoint")
        if (stop.requested or deadline is not None) and mngr.latest_step() != step:
            checkpoints.save(mngr, step, state, force=True)
    finally:
        stop.restore()
        out.close()
        mngr.wait_until_finished()
        mngr.close()
    print(f"done: step {step}, checkpoints in {workdir / checkpoints.CHECKPOINTS}")
    return state


class Outputs:
    """What the loop writes between steps (through `RunLog`, chief only): metrics with
    frames per second, the in-training Fréchet distance and its best checkpoint, and
    sample grids; and the progress bar."""

    def __init__(self, exp: Experiment, workdir: epath.Path, start_step: int,
                 frechet: FrechetToTrainingDigits | None):
        config = exp.config
        self.exp, self.frechet = exp, frechet
        self.frames = exp.frames_per_step()
        is_chief = jax.process_index() == 0
        self.log = RunLog(workdir, start_step, self.frames, is_chief)
        self.best_mngr = checkpoints.best_manager(workdir) if frechet is not None else None
        root_key = jax.random.PRNGKey(config.seed)
        self.sample_key = jax.random.fold_in(root_key, 2**31 - 1)
        self.eval_key = jax.random.fold_in(root_key, 2**31 - 2)
        self.fixed_targets = None  # conditional runs paint the same targets every time
        if config.conditional:
            self.fixed_targets = exp.sample_data(jax.random.split(self.sample_key, NUM_SAMPLES))
        if start_step == 0:
            real = np.asarray(exp.sample_data(jax.random.split(self.sample_key, 64)))
            self.log.image("real", make_grid(real, ncols=8), 0, "real.png")
        self.bar = tqdm(total=config.num_train_steps, initial=start_step, unit="step",
                        dynamic_ncols=True, disable=not is_chief)
        self.postfix: dict[str, str] = {}
        self._last_time, self._last_step = time.perf_counter(), start_step

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """The step's metrics and the frames per second since the last record."""
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        metrics["frames_per_second"] = (
            self.frames * (step - self._last_step) / (now - self._last_time)
        )
        self._last_time, self._last_step = now, step
        self.postfix.update(_progress(metrics))
        self.bar.set_postfix(self.postfix, refresh=False)
        self.log.scalars(step, metrics)
        if not all(np.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metrics at step {step}: {metrics}")

    def frechet_distance(self, step: int, state: TrainState) -> None:
        """Measures it, logs it, and saves the state as the best checkpoint if it is."""
        t_eval = time.perf_counter()
        key = jax.random.fold_in(self.eval_key, step)
        distances = _frechet_distances(self.frechet, state, key)
        self._last_time += time.perf_counter() - t_eval  # frames/s counts training only
        self.postfix["FD"] = f"{distances['frechet_train']:.0f}"
        # Saved, then dropped unless it is the best so far.
        checkpoints.save(self.best_mngr, step, state,
                         metrics={"frechet_train": distances["frechet_train"]})
        self.log.scalars(step, distances, prefix="eval")

    def samples(self, step: int, state: TrainState) -> None:
        key = jax.random.fold_in(self.sample_key, step)
        grid = sample_grid(self.exp, state.eval_params, key, self.fixed_targets)
        self.log.image("samples", grid, step, f"step_{step:07d}.png")

    def close(self) -> None:
        self.bar.close()
        if self.best_mngr is not None:
            self.best_mngr.wait_until_finished()
            self.best_mngr.close()
        self.log.close()


def _progress(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's figures: frames/s, mean return and, with a WGAN critic, its
    Wasserstein estimate (standardised D rewards average 0 by construction; this says
    how far the agent is from the data)."""
    out = {"fps": f"{metrics['frames_per_second']:,.0f}",
           "ret": f"{metrics['episode_return']:.3f}"}
    if "wasserstein" in metrics:
        out["W"] = f"{metrics['wasserstein']:.2f}"
    return out


def _frechet_distances(frechet: FrechetToTrainingDigits, state: TrainState,
                       key: Any) -> dict[str, float]:
    """The painter's Fréchet distance to training digits, and with an average kept,
    the learner's own parameters' with the same key (what the average adds)."""
    distances = {"frechet_train": frechet(state.eval_params, key)}
    if state.policy_ema is not None:
        distances["frechet_train_online"] = frechet(state.policy_params, key)
    return distances
