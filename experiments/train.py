r"""Trains SPIRAL: `python -m experiments.train --config=NAME --workdir=DIR`.

    python -m experiments.train                                    # mnist5k, offline
    python -m experiments.train --config=celeba --workdir=runs/celeba
    python -m experiments.train --config=mnist5k_conditional --max_minutes=60
    python -m experiments.train --config=mnist5k --config.conditional=True \
        --config.reward.kind=l2 --config.batch_size=64

`--config` takes a name from `experiments/configs/` (mnist5k, mnist5k_conditional,
mnist, omniglot, celeba, small) or a path to a config file; `--config.FIELD=VALUE`
overrides any field.
The run shows a progress bar with frames per second, writes TensorBoard events, the
same scalars as JSON lines (`metrics.jsonl`, for plots without TensorBoard), PNG
sample grids and orbax checkpoints to the workdir, and running the same command
again resumes from the latest checkpoint. Ctrl-C (or SIGTERM) finishes the current
step, saves a checkpoint and exits. A checkpoint holds the whole `TrainState`: policy
and D parameters, both optimiser states, the replay and the step; step t's PRNG key is
`fold_in(PRNGKey(config.seed), t)`, so a resumed run draws the randomness it would have
drawn uninterrupted.

With `--config.eval_every=N` (unconditional digit runs; ignored otherwise), every N
steps the run paints `eval_episodes` episodes and logs their Fréchet distance to as
many training digits on the digit classifier's features (`frechet_train`;
`experiments.evaluate` measures against held-out digits), and keeps the checkpoint
with the lowest one in `<workdir>/best_checkpoints/`.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sys
import time

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "mnist5k"


def config_names() -> list[str]:
    return sorted(
        p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common")
    )


def resolve_config_argv(argv: list[str]) -> list[str]:
    """Turns `--config=NAME` into the config file's path; exits on an unknown name."""
    out = []
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and not value.endswith(".py") and "/" not in value:
            if value not in config_names():
                sys.stderr.write(
                    f"error: unknown config {value!r}; available: {', '.join(config_names())} "
                    f"(or a path to a config file)\n"
                )
                sys.exit(2)
            path = str(CONFIG_DIR / f"{value}.py")
            if arg == "--config":
                out.append(arg)
                argv[i + 1] = path
                continue
            arg = f"--config={path}"
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv = resolve_config_argv(sys.argv)

# Imported after argv handling so that a bad name fails before JAX starts.
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402
from tqdm import tqdm  # noqa: E402

from spiral_jax import checkpoints as checkpoints_lib  # noqa: E402
from spiral_jax import digit_classifier  # noqa: E402
from spiral_jax import train as train_lib  # noqa: E402
from spiral_jax.image_grid import make_grid, save_grid  # noqa: E402
from spiral_jax.sample_quality import BEST_CHECKPOINTS, FrechetToTrainingDigits  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(CONFIG_DIR / f"{DEFAULT_CONFIG}.py"), "Config name or file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write logs, samples, checkpoints.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node GPU)."
)
_MAX_MINUTES = flags.DEFINE_float(
    "max_minutes", 0.0,
    "Stop (and save) once this many minutes of training have passed in this "
    "invocation, compilation included; 0 = no limit. For time-boxed CPU results.",
)
_NUM_SAMPLES = 16


def _default_workdir(config) -> pathlib.Path:
    return pathlib.Path("runs") / config.dataset


def _checkpoint_manager(workdir: pathlib.Path, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(workdir.resolve() / "checkpoints", options=options)


def _best_checkpoint_manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
    """Keeps the one checkpoint with the lowest in-training Fréchet distance."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m["frechet_train"], best_mode="min",
        keep_checkpoints_without_metrics=False, enable_async_checkpointing=True, create=True,
    )
    return ocp.CheckpointManager(workdir.resolve() / BEST_CHECKPOINTS, options=options)


def _write_config(workdir: pathlib.Path, config) -> None:
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists() and path.read_text() != text:
        logging.warning("config differs from the one in %s; the new one is used", path)
    path.write_text(text)


def _sample_grid(trainer, state, key, targets=None) -> np.ndarray:
    traj = trainer.make_sampler(_NUM_SAMPLES)(state.eval_params, key, targets)
    canvases = np.asarray(traj.final_canvas)
    if targets is None:
        return make_grid(canvases, ncols=8)
    pairs = np.stack([np.asarray(targets), canvases], axis=1).reshape((-1,) + canvases.shape[1:])
    return make_grid(pairs, ncols=8)


def check_eval_config(config) -> bool:
    """Whether the in-training Fréchet distance runs: `eval_every` > 0 on an
    unconditional digit run. Elsewhere it is skipped with a note, so that switching a
    config such as mnist5k to conditional or to another dataset needs no second
    override. ValueError for settings that cannot work."""
    if config.eval_every < 0:
        raise ValueError(f"eval_every={config.eval_every} must be >= 0 (0 = no evaluation)")
    if not config.eval_every:
        return False
    if config.conditional or config.dataset not in digit_classifier.DATASETS:
        print(
            f"note: eval_every={config.eval_every} ignored: the in-training Fréchet "
            f"distance needs an unconditional run on "
            f"{', '.join(digit_classifier.DATASETS)}, not dataset={config.dataset!r} "
            f"with conditional={config.conditional}"
        )
        return False
    if config.eval_episodes < 2:
        raise ValueError(
            f"eval_episodes={config.eval_episodes} must be >= 2 for a Fréchet distance"
        )
    return True


class _GracefulStop:
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


def _minutes_trained(metrics_path: pathlib.Path, step: int) -> float:
    """Training minutes logged up to `step` by earlier invocations (0 for a new run),
    so that a resumed run's `minutes` continue where the checkpoint left off."""
    minutes = 0.0
    if step > 0 and metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", step + 1) <= step:
                minutes = max(minutes, float(record.get("minutes", 0.0)))
    return minutes


def _save_png(path: pathlib.Path, grid: np.ndarray) -> None:
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def main(argv):
    del argv
    config = _CONFIG.value
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if _MULTIHOST.value or config.multihost:
        jax.distributed.initialize()
    workdir = pathlib.Path(_WORKDIR.value) if _WORKDIR.value else _default_workdir(config)
    try:
        evaluates = check_eval_config(config)
        trainer = train_lib.make_trainer(config)
        frechet = FrechetToTrainingDigits(trainer, config) if evaluates else None
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "samples").mkdir(exist_ok=True)
    is_chief = jax.process_index() == 0
    mngr = _checkpoint_manager(workdir, config)
    best_mngr = _best_checkpoint_manager(workdir) if frechet is not None else None
    state = trainer.init(jax.random.PRNGKey(config.seed))
    latest = mngr.latest_step()
    if latest is not None:
        state = checkpoints_lib.restore_state(mngr, latest, state)
        logging.info("resumed from step %d in %s", latest, workdir)
        print(f"resumed from step {latest} ({workdir / 'checkpoints'})")
    if is_chief:
        _write_config(workdir, config)
    start_step = int(state.step)

    train_step = trainer.make_train_step()
    root_key = jax.random.PRNGKey(config.seed)
    sample_key = jax.random.fold_in(root_key, 2**31 - 1)
    eval_key = jax.random.fold_in(root_key, 2**31 - 2)
    fixed_targets = None
    if config.conditional:
        fixed_targets = trainer.sample_data(jax.random.split(sample_key, _NUM_SAMPLES))
    writer = SummaryWriter(str(workdir / "tensorboard")) if is_chief else None
    frames = trainer.frames_per_step()
    print(
        f"training {config.dataset} on {trainer.num_devices} device(s) "
        f"({jax.devices()[0].platform}), batch {config.batch_size}, "
        f"{frames} frames/step, workdir {workdir}"
    )
    if writer is not None and start_step == 0:
        real = np.asarray(trainer.sample_data(jax.random.split(sample_key, 64)))
        writer.add_image("real", make_grid(real, ncols=8), 0, dataformats="HWC")
        save_grid(workdir / "samples" / "real.png", real, ncols=8)

    metrics_path = workdir / "metrics.jsonl"
    minutes_before = _minutes_trained(metrics_path, start_step)
    metrics_file = open(metrics_path, "a") if is_chief else None  # noqa: SIM115

    def log_record(step: int, now: float, values: dict[str, float]) -> None:
        """Appends one metrics.jsonl line (chief only), flushed so a kill loses none."""
        if metrics_file is not None:
            record = {"step": step, "frames": step * frames,
                      "minutes": minutes_before + (now - t_start) / 60.0, **values}
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    stop = _GracefulStop()
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * _MAX_MINUTES.value if _MAX_MINUTES.value > 0 else None
    bar = tqdm(
        total=config.num_train_steps, initial=start_step, unit="step", dynamic_ncols=True,
        disable=not is_chief,
    )
    step = start_step
    last_time, last_step = time.perf_counter(), step
    eval_postfix: dict[str, str] = {}
    try:
        while step < config.num_train_steps and not stop.requested:
            if deadline is not None and time.perf_counter() >= deadline:
                print(f"\n--max_minutes={_MAX_MINUTES.value:g} reached at step {step}")
                break
            state, metrics = train_step(state, jax.random.fold_in(root_key, step))
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == config.num_train_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                fps = frames * (step - last_step) / (now - last_time)
                last_time, last_step = now, step
                metrics["frames_per_second"] = fps
                postfix = {"fps": f"{fps:,.0f}", "ret": f"{metrics['episode_return']:.3f}"}
                if "wasserstein" in metrics:
                    # Standardised D rewards average 0 by construction; the critic's
                    # Wasserstein estimate says how far the agent is from the data.
                    postfix["W"] = f"{metrics['wasserstein']:.2f}"
                postfix.update(eval_postfix)
                bar.set_postfix(postfix, refresh=False)
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/frames", step * frames, step)
                log_record(step, now, metrics)
                if not all(np.isfinite(v) for v in metrics.values()):
                    raise FloatingPointError(f"non-finite metrics at step {step}: {metrics}")
            if frechet is not None and (
                step % config.eval_every == 0 or step == config.num_train_steps
            ):
                t_eval = time.perf_counter()
                k_eval = jax.random.fold_in(eval_key, step)
                distances = {"frechet_train": frechet(state.eval_params, k_eval)}
                if state.policy_ema is not None:  # what the average adds, side by side
                    distances["frechet_train_online"] = frechet(state.policy_params, k_eval)
                last_time += time.perf_counter() - t_eval  # frames/s counts training only
                eval_postfix["FD"] = f"{distances['frechet_train']:.0f}"
                # Saved, then dropped unless it is the best so far.
                best_mngr.save(step, args=ocp.args.StandardSave(state),
                               metrics={"frechet_train": distances["frechet_train"]})
                if writer is not None:
                    for name, distance in distances.items():
                        writer.add_scalar(f"eval/{name}", distance, step)
                log_record(step, time.perf_counter(), distances)
            if step % config.sample_every == 0 or step == config.num_train_steps:
                key = jax.random.fold_in(sample_key, step)
                grid = _sample_grid(trainer, state, key, fixed_targets)
                if writer is not None:
                    writer.add_image("samples", grid, step, dataformats="HWC")
                    _save_png(workdir / "samples" / f"step_{step:07d}.png", grid)
            if step % config.checkpoint_every == 0 or step == config.num_train_steps:
                mngr.save(step, args=ocp.args.StandardSave(state))
        if stop.requested or deadline is not None:
            if stop.requested:
                print(f"\ninterrupted at step {step}: saving a checkpoint")
            if mngr.latest_step() != step:
                mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    finally:
        stop.restore()
        bar.close()
        for m in (mngr, best_mngr):
            if m is not None:
                m.wait_until_finished()
                m.close()
        if writer is not None:
            writer.close()
        if metrics_file is not None:
            metrics_file.close()
    print(f"done: step {step}, checkpoints in {workdir / 'checkpoints'}")


if __name__ == "__main__":
    app.run(main)
