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

    `max_minutes` > 0 stops (and saves) once that many minutes of this invocation have
    passed, compilation included. Raises ValueError for a config that cannot train,
    before anything compiles.
    """
    evaluates = check_eval_config(config)
    exp = experiment.build(config)
    frechet = FrechetToTrainingDigits(exp) if evaluates else None
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    mngr = checkpoints.manager(workdir, config.keep_checkpoints)
    best_mngr = checkpoints.best_manager(workdir) if frechet is not None else None
    state = restore_or_init(exp, mngr)
    if is_chief:
        write_config(workdir, config)
    start_step = step = int(state.step)

    root_key = jax.random.PRNGKey(config.seed)
    sample_key = jax.random.fold_in(root_key, 2**31 - 1)
    eval_key = jax.random.fold_in(root_key, 2**31 - 2)
    fixed_targets = None
    if config.conditional:
        fixed_targets = exp.sample_data(jax.random.split(sample_key, NUM_SAMPLES))
    frames = exp.frames_per_step()
    print(f"training {config.dataset} on {exp.num_devices} device(s) "
          f"({jax.devices()[0].platform}), batch {config.batch_size}, {frames} frames/step, "
          f"workdir {workdir}")
    log = RunLog(workdir, start_step, frames, is_chief)
    if start_step == 0:
        real = np.asarray(exp.sample_data(jax.random.split(sample_key, 64)))
        log.image("real", make_grid(real, ncols=8), 0, "real.png")

    step_fn = train_step.make_train_step(exp)
    stop = GracefulStop()
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * max_minutes if max_minutes > 0 else None
    bar = tqdm(total=config.num_train_steps, initial=start_step, unit="step",
               dynamic_ncols=True, disable=not is_chief)
    last_time, last_step = t_start, step
    postfix: dict[str, str] = {}

    def is_due(every: int) -> bool:
        return step % every == 0 or step == config.num_train_steps

    try:
        while step < config.num_train_steps and not stop.requested:
            if deadline is not None and time.perf_counter() >= deadline:
                print(f"\n--max_minutes={max_minutes:g} reached at step {step}")
                break
            state, metrics = step_fn(state, jax.random.fold_in(root_key, step))
            step += 1
            bar.update(1)
            if is_due(config.log_every):
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                metrics["frames_per_second"] = frames * (step - last_step) / (now - last_time)
                last_time, last_step = now, step
                postfix.update(_progress(metrics))
                bar.set_postfix(postfix, refresh=False)
                log.scalars(step, metrics)
                if not all(np.isfinite(v) for v in metrics.values()):
                    raise FloatingPointError(f"non-finite metrics at step {step}: {metrics}")
            if frechet is not None and is_due(config.eval_every):
                t_eval = time.perf_counter()
                distances = _frechet_distances(frechet, state, jax.random.fold_in(eval_key, step))
                last_time += time.perf_counter() - t_eval  # frames/s counts training only
                postfix["FD"] = f"{distances['frechet_train']:.0f}"
                # Saved, then dropped unless it is the best so far.
                checkpoints.save(best_mngr, step, state,
                                 metrics={"frechet_train": distances["frechet_train"]})
                log.scalars(step, distances, prefix="eval")
            if is_due(config.sample_every):
                grid = sample_grid(exp, state.eval_params, jax.random.fold_in(sample_key, step),
                                   fixed_targets)
                log.image("samples", grid, step, f"step_{step:07d}.png")
            if is_due(config.checkpoint_every):
                checkpoints.save(mngr, step, state)
        if stop.requested:
            print(f"\ninterrupted at step {step}: saving a checkpoint")
        if (stop.requested or deadline is not None) and mngr.latest_step() != step:
            checkpoints.save(mngr, step, state, force=True)
    finally:
        stop.restore()
        bar.close()
        for m in (mngr, best_mngr):
            if m is not None:
                m.wait_until_finished()
                m.close()
        log.close()
    print(f"done: step {step}, checkpoints in {workdir / checkpoints.CHECKPOINTS}")
    return state


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
