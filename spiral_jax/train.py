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
* `timing.jsonl`: with each metrics record, the share of wall time spent between
  steps (`loop_overhead`);
* `config.json`: the config, for `spiral_jax.evaluate`.

A population (`config.population.size` > 1) logs the members' mean and each member's
metrics, and every `population.exploit_every` steps runs PBT's exploit/explore on their
fitness (`spiral_jax.population_loop`); samples and the best checkpoint's figure are
its fittest member's. `timing.jsonl` gets, with each metrics record, `loop_overhead`:
the share of wall time spent between steps.

Step t's PRNG key is `fold_in(PRNGKey(config.seed), t)`, so a resumed run draws the
randomness it would have drawn uninterrupted.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm import tqdm

from spiral_jax import checkpoints, experiment, pictures, stops, train_step
from spiral_jax import workdir as workdir_lib
from spiral_jax.experiment import ConfigError, Experiment, TrainState
from spiral_jax.image_grid import make_grid
from spiral_jax.population_loop import (
    PopulationLoop,
    best_member,
    fitness_kind,
    member_hparams,
    member_scalars,
    with_fitness,
)
from spiral_jax.run_log import RunLog
from spiral_jax.sample_quality import FrechetToTrainingDigits, check_eval_config
from spiral_jax.stops import Stop, TrainingFailure
from spiral_jax.types import is_number

NUM_SAMPLES = 16  # paintings in each samples/step_*.png


@dataclasses.dataclass
class RunResult:
    """How `train_and_evaluate` ended: the last state, its step, and why it stopped
    (`Stop.NONE`: `num_train_steps` reached; SIGNAL or DEADLINE: stopped early and
    saved, resumable). Failures raise `TrainingFailure` instead."""

    state: TrainState
    step: int
    stop: Stop

    @property
    def exit_code(self) -> int:
        return stops.EXIT_FINISHED if self.stop == Stop.NONE else stops.EXIT_STOPPED


def restore_or_init(exp: Experiment, mngr: Any, workdir: epath.Path) -> TrainState:
    """The newest checkpoint that verifies, or a fresh state from `config.seed`."""
    state = exp.init_state(jax.random.PRNGKey(exp.config.seed))
    restored = checkpoints.restore_latest(mngr, state, workdir)
    if restored is None:
        return state
    print(f"resumed from step {int(restored.step)} ({mngr.directory})")
    return restored


def sample_grid(exp: Experiment, params: Any, key: Any, targets: Any = None) -> np.ndarray:
    """A uint8 grid of NUM_SAMPLES paintings; with targets, (target, painting) pairs."""
    canvases = np.asarray(exp.sampler(NUM_SAMPLES)(params, key, targets).final_canvas)
    return pictures.sample_grid(canvases, None if targets is None else np.asarray(targets))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | epath.PathLike, max_minutes: float = 0.0,
    allow_config_change: bool = False,
) -> RunResult:
    """Trains (or resumes) the run of `config` in `workdir` until `num_train_steps`,
    `max_minutes` or SIGTERM / Ctrl-C on any process, all processes stopping at the
    same step.

    `max_minutes` > 0 stops (and saves) once that many minutes have passed since the
    call, setup and compilation included. Raises ConfigError (a ValueError) for a config
    or workdir that cannot train, or a resume whose config changed (unless
    `allow_config_change`; changed shapes always refuse), before anything compiles;
    TrainingFailure when the run cannot go on (its last good checkpoint is kept).
    """
    t_start = time.perf_counter()
    if not (is_number(max_minutes) and max_minutes >= 0):
        raise ConfigError(f"max_minutes={max_minutes!r} must be a number >= 0 (0 = no limit)")
    evaluates = check_eval_config(config)
    exp = experiment.build(config)
    if exp.population.stacked:
        fitness_kind(exp, evaluates)  # a fitness the run cannot measure: refused now
    path = workdir_lib.check(workdir)
    mngr = checkpoints.manager(path, config.keep_checkpoints)
    try:
        workdir_lib.check_config(path, config, resuming=bool(mngr.all_steps()),
                                 allow_change=allow_config_change)
        state = restore_or_init(exp, mngr, path)
    except BaseException:
        mngr.close()
        raise
    with stops.StopRequests(max_minutes, t_start) as requests:
        lost = False  # a lost process: skip the clean-up, which would wait for it
        try:
            state, step, stop = _loop(exp, state, mngr, path, requests, evaluates)
        except stops.LostProcess:
            lost = True
            raise
        finally:
            if not lost:
                checkpoints.finish(mngr)
    if stop & Stop.FAILURE:
        raise TrainingFailure(requests.failure or "another process failed (see its log): "
                              "stopped without saving; the last checkpoint is kept")
    print(f"done: step {step}, checkpoints in {path / checkpoints.CHECKPOINTS}")
    return RunResult(state, step, stop)


def _loop(exp: Experiment, state: TrainState, mngr: Any, workdir: epath.Path,
          requests: stops.StopRequests, evaluates: bool) -> tuple[TrainState, int, Stop]:
    """Steps until the processes agree to stop; saves where they stopped unless one
    failed. Returns (state, step, agreed stop)."""
    config = exp.config
    step = int(state.step)
    split = (f", {exp.population.size} members over {exp.member_shards} device group(s)"
             if exp.population.stacked else "")
    print(f"training {config.dataset} on {exp.num_devices} device(s) "
          f"({jax.devices()[0].platform}{split}), batch {config.batch_size}, "
          f"{exp.frames_per_step()} frames/step, workdir {workdir}")
    frechet = FrechetToTrainingDigits(exp) if evaluates else None
    members = PopulationLoop(exp, evaluates) if exp.population.stacked else None
    out = Outputs(exp, workdir, step, frechet, members)
    step_fn = train_step.make_train_step(exp)
    root_key = jax.random.PRNGKey(config.seed)

    def is_due(every: int) -> bool:
        return step % every == 0 or step == config.num_train_steps

    crash: Exception | None = None  # raised once the other processes know
    try:
        while True:
            stop = requests.agreed()  # the same on every process
            if stop or step >= config.num_train_steps:
                break
            state, metrics = step_fn(state, jax.random.fold_in(root_key, step))
            step += 1
            out.bar.update(1)
            try:
                in_a_row = int(np.max(metrics["skipped_in_a_row"]))  # waits for the step
                t_between = time.perf_counter()
                if in_a_row >= config.max_nonfinite_in_a_row:
                    requests.fail(
                        f"{in_a_row} updates in a row had non-finite gradients (step {step},"
                        f" max_nonfinite_in_a_row={config.max_nonfinite_in_a_row}): stopped;"
                        " the last checkpoint is kept"
                    )
                    continue
                exploits = members is not None and members.is_due(step)
                if members is not None:
                    members.observe(metrics)
                if is_due(config.log_every):
                    out.log_metrics(step, metrics, state)
                if out.frechet is not None and (
                        is_due(config.eval_every) or (exploits and members.kind == "frechet")):
                    state = out.frechet_distance(step, state)
                if exploits:
                    state = out.exploit(step, state)
                if is_due(config.sample_every):
                    out.samples(step, state)
                checkpoints.check_saves(mngr)
                if is_due(config.checkpoint_every):
                    checkpoints.save(mngr, step, state)
                out.between_steps += time.perf_counter() - t_between
            except TrainingFailure as e:
                requests.fail(str(e))
            except Exception as e:  # noqa: BLE001 - a bug: agree to stop, then raise it
                requests.fail(f"{type(e).__name__}: {e}")
                crash = e
        if crash is not None:
            raise crash
        if stop & Stop.FAILURE:
            print(f"\nstopped at step {step}: a process failed")
        elif stop:
            why = ("SIGTERM / Ctrl-C" if stop & Stop.SIGNAL
                   else f"--max_minutes={requests.max_minutes:g}" if requests.max_minutes
                   else "--max_minutes of another process")
            if mngr.latest_step() == step or step == 0:  # nothing new to save
                print(f"\n{why} at step {step}")
            else:
                print(f"\n{why} at step {step}: saving a checkpoint")
                checkpoints.save(mngr, step, state, force=True)
    finally:
        out.close()
    return state, step, stop


class Outputs:
    """What the loop writes between steps (through `RunLog`, chief only): metrics with
    frames per second, the in-training Fréchet distance and its best checkpoint, and
    sample grids; a population's exploit steps; and the progress bar.

    It also keeps the loop's cost: `between_steps` is the wall time spent after a step
    finished and before the next was dispatched (logging, evaluation, pictures,
    checkpoint saves, exploit steps). With each metrics record, `timing.jsonl` gets the
    fraction of wall time since the previous record spent so (``loop_overhead``), and
    `close` prints the whole run's. Asynchronous checkpoint writes that overlap the next
    steps are not in it: they show as slower steps (`experiments.bench_train` gives the
    bare step's rate to compare with)."""

    def __init__(self, exp: Experiment, workdir: epath.Path, start_step: int,
                 frechet: FrechetToTrainingDigits | None,
                 members: PopulationLoop | None = None):
        config = exp.config
        self.exp, self.frechet, self.members = exp, frechet, members
        self.between_steps = 0.0
        self._t_start = self._last_wall = time.perf_counter()
        self._between_at_last = 0.0
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

    def log_metrics(self, step: int, metrics: dict[str, Any], state: TrainState) -> None:
        """The step's metrics (a population's: the members' mean and each member's, and
        their hyperparameters), frames per second and the loop's overhead since the
        last record."""
        if self.members is None:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        else:
            metrics = member_scalars(metrics)
            metrics.update(member_hparams(state))
        now = time.perf_counter()
        metrics["frames_per_second"] = (
            self.frames * (step - self._last_step) / (now - self._last_time)
        )
        overhead = (self.between_steps - self._between_at_last) / (now - self._last_wall)
        self._last_wall, self._between_at_last = now, self.between_steps
        self._last_time, self._last_step = now, step
        self.postfix.update(_progress(metrics))
        self.bar.set_postfix(self.postfix, refresh=False)
        self.log.scalars(step, metrics)
        self.log.timing(step, {"loop_overhead": overhead})

    def frechet_distance(self, step: int, state: TrainState) -> TrainState:
        """Measures it, logs it, and saves the state as the best checkpoint if it is (a
        population's: every member's, kept as their fitness when that is the Fréchet
        distance, and the best member's is the run's)."""
        t_eval = time.perf_counter()
        key = jax.random.fold_in(self.eval_key, step)
        if self.members is None:
            distances = _frechet_distances(self.frechet, state, key)
        else:  # every member with the same key; the best one is the run's figure
            per_member = [_frechet_distances(self.frechet, self.members.member(state, i), key)
                          for i in range(self.exp.population.size)]
            if self.members.kind == "frechet":
                state = self.exp.place(
                    with_fitness(state, [d["frechet_train"] for d in per_member]))
            distances = {f"{k}/m{i}": v for i, d in enumerate(per_member) for k, v in d.items()}
            distances["frechet_train"] = min(d["frechet_train"] for d in per_member)
        self._last_time += time.perf_counter() - t_eval  # frames/s counts training only
        self.postfix["FD"] = f"{distances['frechet_train']:.0f}"
        # Saved, then dropped unless it is the best so far.
        checkpoints.save(self.best_mngr, step, state,
                         metrics={"frechet_train": distances["frechet_train"]})
        self.log.scalars(step, distances, prefix="eval")
        return state

    def exploit(self, step: int, state: TrainState) -> TrainState:
        """A population's exploit/explore step, logged under ``pbt/``."""
        state, record = self.members.exploit(step, state)
        if record:
            self.log.scalars(step, record, prefix="pbt")
            self.postfix["best"] = f"m{best_member(state)}"
        return state

    def samples(self, step: int, state: TrainState) -> None:
        """A sample grid (a population's: its best member's)."""
        key = jax.random.fold_in(self.sample_key, step)
        if self.members is not None:
            state = self.members.member(state)
        grid = sample_grid(self.exp, state.eval_params, key, self.fixed_targets)
        self.log.image("samples", grid, step, f"step_{step:07d}.png")

    def close(self) -> None:
        self.bar.close()
        wall = time.perf_counter() - self._t_start
        if wall > 0 and self.between_steps > 0:
            print(f"\nwork between steps (logs, evaluation, pictures, checkpoints): "
                  f"{self.between_steps:.1f} s, {100 * self.between_steps / wall:.1f} % of "
                  f"the loop's {wall:.0f} s")
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
