r"""Evaluates a trained run: pictures, a painting GIF and metrics with baselines.

    python -m experiments.evaluate --workdir=runs/mnist5k
    python -m experiments.evaluate --checkpoint=runs/mnist5k/checkpoints/2000
    python -m experiments.evaluate --workdir=runs/cond --num_episodes=1000

Loads `<workdir>/config.json` and the latest (or the given) checkpoint, paints
`--num_episodes` episodes and writes to `<workdir>/eval/` (or `--out`):

* `samples.png`: final canvases; for a conditional run, pairs (target, painting);
* `samples_greedy.png`: the same with the agent's most likely actions instead of
  sampled ones (each action part the argmax given the parts before it);
* `painting.gif`: several episodes painted stroke by stroke, one frame per step
  (T + 1 frames: the blank canvas, then one per action; the bar at the bottom shows
  the step); for a conditional run the targets are shown above;
* `random_policy.png`: final canvases of the random-policy baseline, for comparison;
* `metrics.json`: the numbers printed as a table.

Metrics (see `spiral_jax.metrics`), all on the dataset's held-out split, for the agent
as trained (sampling its actions) and greedy. A run that keeps a moving average of the
policy's parameters (`learner.ema_decay`) is evaluated with the average, and the
learner's own parameters are painted beside it (`agent_online` sampling its actions,
`agent_online_greedy` greedy):

* conditional: mean squared error to the target, as a fraction of a blank canvas's
  (`relative_mse`), for the agent and, measured in the same run, a blank canvas, a
  random policy (uniform random actions through the environment) and DESIGN.md's
  reference points (the mean training digit, the mean training digit of the target's
  class, the nearest training digit, the target blurred); for digit datasets, also the
  fraction of paintings that the digit classifier reads as the target's digit;
* unconditional, digit datasets: the Fréchet distance between held-out real digits and
  the paintings on the digit classifier's features, and the classifier's confident
  fraction and class entropy; for the same baselines and for real training digits
  (the floor that N samples can reach).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from PIL import Image

from spiral_jax import checkpoints as checkpoints_lib
from spiral_jax import datasets as data_lib
from spiral_jax import digit_classifier
from spiral_jax import metrics as metrics_lib
from spiral_jax import train as train_lib
from spiral_jax.image_grid import make_grid
from spiral_jax.sample_quality import BEST_CHECKPOINTS

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None,
    "A checkpoint directory, <workdir>/checkpoints/<step> or, for the one with the best "
    "in-training Fréchet distance, <workdir>/best_checkpoints/<step> (default: latest).",
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default <workdir>/eval).")
_NUM_EPISODES = flags.DEFINE_integer(
    "num_episodes", 1000, "Episodes to paint (conditional: held-out targets, at most the split)."
)
_BATCH = flags.DEFINE_integer("batch_size", 250, "Episodes painted per call.")
_GIF_EPISODES = flags.DEFINE_integer("gif_episodes", 8, "Episodes side by side in the GIF.")
_GRID = flags.DEFINE_integer("grid_samples", 32, "Paintings in samples.png.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for painting and the random policy.")

_BLUR_SIGMAS_28 = (1.0, 1.5)  # DESIGN.md's blurred-target points, in 28x28-digit pixels
_MAX_REFERENCE_TRAIN = 5000  # training images for the references (all of mnist5k's 4,000)


# ------------------------------------------------------------------------------------
# Loading a run.


CHECKPOINT_FOLDERS = ("checkpoints", BEST_CHECKPOINTS)
"""A run's checkpoint folders: the latest few, and the best by in-training Fréchet
distance (`experiments.train`, `eval_every`)."""


def resolve_run(
    workdir: str | None, checkpoint: str | None
) -> tuple[pathlib.Path, int | None, str]:
    """(workdir, step or None for the latest, checkpoint folder) from the flags;
    ValueError if unusable."""
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of --workdir=DIR or --checkpoint=DIR/checkpoints/STEP")
    if checkpoint is not None:
        path = pathlib.Path(checkpoint).resolve()
        if not path.name.isdigit() or path.parent.name not in CHECKPOINT_FOLDERS:
            raise ValueError(
                f"--checkpoint={checkpoint!r} must be <workdir>/checkpoints/<step> or "
                f"<workdir>/best_checkpoints/<step>"
            )
        if not path.is_dir():
            raise ValueError(f"--checkpoint={checkpoint!r} does not exist")
        return path.parent.parent, int(path.name), path.parent.name
    path = pathlib.Path(workdir)
    if not (path / "config.json").exists():
        raise ValueError(f"--workdir={workdir!r} has no config.json (not a training run?)")
    return path, None, "checkpoints"


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The run's config as `experiments.train` wrote it (JSON; tuples come back as lists)."""
    path = workdir / "config.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist (not a training run?)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_state(trainer: train_lib.Trainer, workdir: pathlib.Path, step: int | None,
                  folder: str = "checkpoints"):
    """The run's TrainState at `step` (latest when None) in `workdir/folder`, and that step."""
    config = trainer.config
    options = ocp.CheckpointManagerOptions(create=False)
    mngr = ocp.CheckpointManager(workdir.resolve() / folder, options=options)
    try:
        steps = list(mngr.all_steps())
        if not steps:
            raise ValueError(f"no checkpoints in {workdir / folder}")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ValueError(f"no checkpoint for step {step}; available: {sorted(steps)}")
        state = checkpoints_lib.restore_state(
            mngr, step, trainer.init(jax.random.PRNGKey(config.seed))
        )
    finally:
        mngr.close()
    return state, step


# ------------------------------------------------------------------------------------
# Painting.


def paint(trainer, params, key, num_episodes: int, batch: int, targets=None,
          keep_trajectory: int = 0, greedy: bool = False):
    """Final canvases [N, H, W, C] of N agent episodes (in batches of `batch`), the
    number of paint steps of each, and the canvases [T + 1, k, H, W, C] of the first
    `keep_trajectory` episodes (c_0 .. c_T). `greedy`: most likely actions."""
    batch = min(batch, num_episodes)
    sampler = trainer.make_sampler(batch, greedy)
    finals, strokes, frames = [], [], None
    for i, start in enumerate(range(0, num_episodes, batch)):
        stop = min(start + batch, num_episodes)
        chunk_targets = None
        if targets is not None:
            idx = np.arange(start, start + batch) % num_episodes  # pad the last batch
            chunk_targets = jnp.asarray(targets[idx])
        traj = sampler(params, jax.random.fold_in(key, i), chunk_targets)
        n = stop - start
        finals.append(np.asarray(traj.final_canvas)[:n])
        strokes.append(np.asarray(jnp.sum(traj.action["flag"] == 1, axis=0))[:n])
        if i == 0 and keep_trajectory:
            k = min(keep_trajectory, n)
            obs = np.asarray(traj.observation["canvas"][:, :k])
            frames = np.concatenate([obs, np.asarray(traj.final_canvas)[None, :k]])
    return np.concatenate(finals), np.concatenate(strokes), frames


def paint_random(env, key, num_episodes: int, batch: int) -> np.ndarray:
    """Final canvases of N episodes of uniform random actions (`metrics.make_random_policy`)."""
    batch = min(batch, num_episodes)
    play = metrics_lib.make_random_policy(env, batch)
    out = [np.asarray(play(jax.random.fold_in(key, i)))
           for i in range(math.ceil(num_episodes / batch))]
    return np.concatenate(out)[:num_episodes]


# ------------------------------------------------------------------------------------
# Pictures.


def _to_pil(grid: np.ndarray) -> Image.Image:
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def sample_grid(canvases: np.ndarray, targets: np.ndarray | None, ncols: int = 8) -> np.ndarray:
    """uint8 grid of paintings; with targets, (target, painting) pairs side by side."""
    if targets is None:
        return make_grid(canvases, ncols=ncols)
    pairs = np.stack([targets, canvases], axis=1).reshape((-1,) + canvases.shape[1:])
    return make_grid(pairs, ncols=2 * (ncols // 2))


def gif_frames(frames: np.ndarray, targets: np.ndarray | None = None,
               min_side: int = 96) -> list[Image.Image]:
    """One picture per step from canvases [T + 1, k, H, W, C]: the k episodes side by
    side (targets in a row above, if given), enlarged (nearest) to at least `min_side`
    pixels a canvas, with a progress bar under them (which also keeps consecutive
    frames distinct, so GIF writers do not merge steps that changed nothing)."""
    num, k = frames.shape[0], frames.shape[1]
    scale = max(1, -(-min_side // frames.shape[2]))
    pictures = []
    for t in range(num):
        tiles = frames[t] if targets is None else np.concatenate([targets[:k], frames[t]])
        grid = make_grid(tiles, ncols=k)
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
        bar = np.full((6, grid.shape[1], grid.shape[2]), 255, np.uint8)
        bar[1:5, : round(grid.shape[1] * t / max(num - 1, 1))] = 0
        pictures.append(_to_pil(np.concatenate([grid, bar])))
    return pictures


def save_gif(path: pathlib.Path, pictures: list[Image.Image], ms_per_step: int = 250,
             ms_at_end: int = 1500) -> None:
    durations = [ms_per_step] * (len(pictures) - 1) + [ms_at_end]
    pictures[0].save(
        path, save_all=True, append_images=pictures[1:], duration=durations, loop=0
    )


# ------------------------------------------------------------------------------------
# Metrics.


def _ink(canvases: np.ndarray) -> float:
    return float(np.mean(1.0 - canvases))


def conditional_metrics(canvases: dict[str, np.ndarray], targets: np.ndarray,
                        labels: np.ndarray | None, classifier) -> dict[str, dict]:
    """Per painter: relative and absolute MSE to targets, ink, and (digits) the fraction
    the classifier reads as the target's class."""
    out = {}
    for name, c in canvases.items():
        row = {
            "relative_mse": metrics_lib.relative_mse(c, targets),
            "mse": float(np.mean(metrics_lib.mse_per_image(c, targets))),
            "ink": _ink(c),
        }
        if classifier is not None and labels is not None:
            row["recognised_as_target"] = float(np.mean(classifier.predict(c) == labels))
        out[name] = row
    return out


def unconditional_metrics(canvases: dict[str, np.ndarray], real: np.ndarray,
                          classifier) -> dict[str, dict]:
    """Per painter: Fréchet distance to held-out real digits on the classifier's
    features, confident fraction, class entropy, ink."""
    out = {}
    real_moments = metrics_lib.gaussian_moments(classifier.features(real))
    for name, c in canvases.items():
        score = metrics_lib.classifier_score(classifier.probabilities(c))
        out[name] = {
            "frechet_distance": metrics_lib.frechet_distance_from_moments(
                *real_moments, *metrics_lib.gaussian_moments(classifier.features(c))
            ),
            "confident_fraction": score["confident_fraction"],
            "class_entropy": score["class_entropy"],
            "predicted_class_entropy": score["predicted_class_entropy"],
            "class_histogram": score["class_histogram"],
            "ink": _ink(c),
        }
    return out


def evaluate(workdir: pathlib.Path, step: int | None = None, *, out_dir: pathlib.Path | None = None,
             num_episodes: int = 1000, batch_size: int = 250, gif_episodes: int = 8,
             grid_samples: int = 32, seed: int = 0,
             checkpoints: str = "checkpoints") -> dict[str, Any]:
    """Evaluates the run in `workdir` at `step` (latest when None) of its `checkpoints`
    folder; writes samples.png, painting.gif, metrics.json."""
    for name, value in (("num_episodes", num_episodes), ("batch_size", batch_size),
                        ("gif_episodes", gif_episodes), ("grid_samples", grid_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    start_time = time.perf_counter()
    workdir = pathlib.Path(workdir)
    config = load_config(workdir)
    trainer = train_lib.make_trainer(config)
    state, step = restore_state(trainer, workdir, step, checkpoints)
    out_dir = pathlib.Path(out_dir) if out_dir is not None else workdir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = trainer.env
    size, channels = env.canvas_width, env.channels

    heldout = data_lib.load(config.dataset, "test", image_size=size, channels=channels,
                            data_dir=config.data_dir or None, max_examples=num_episodes)
    n = num_episodes if not config.conditional else min(num_episodes, len(heldout.images))
    real = heldout.as_float()[:n]
    labels = heldout.labels[:n] if heldout.num_classes else None
    is_digits = config.dataset in digit_classifier.DATASETS
    if is_digits and not config.conditional and n < 2:
        raise ValueError(f"num_episodes={n}: a Fréchet distance needs at least 2 episodes")
    classifier = digit_classifier.load_default() if is_digits else None

    key = jax.random.PRNGKey(seed)
    k_agent, k_random, k_train = jax.random.split(key, 3)
    targets = real if config.conditional else None
    # With an average of the parameters kept, "agent" is the average and "agent_online"
    # the parameters the learner last reached, painted with the same key.
    agent, strokes, frames = paint(trainer, state.eval_params, k_agent, n, batch_size,
                                   targets, keep_trajectory=gif_episodes)
    greedy, greedy_strokes, _ = paint(trainer, state.eval_params, k_agent, n, batch_size,
                                      targets, greedy=True)
    blank = np.ones_like(agent)
    random_policy = paint_random(env, k_random, n, batch_size)
    painters = {"agent": agent, "agent_greedy": greedy, "blank_canvas": blank,
                "random_policy": random_policy}
    agent_rows = ["agent", "agent_greedy"]
    if state.policy_ema is not None:
        painters["agent_online"], _, _ = paint(trainer, state.policy_params, k_agent, n,
                                               batch_size, targets)
        painters["agent_online_greedy"], _, _ = paint(trainer, state.policy_params, k_agent,
                                                      n, batch_size, targets, greedy=True)
        agent_rows += ["agent_online", "agent_online_greedy"]

    result: dict[str, Any] = {
        "workdir": str(workdir),
        "step": int(step),
        "checkpoint": f"{checkpoints}/{step}",
        "dataset": config.dataset,
        "split": "test",
        "conditional": bool(config.conditional),
        "canvas": [size, size, channels],
        "episode_length": env.episode_length,
        "num_episodes": n,
        "seed": seed,
        "agent_paint_steps": float(np.mean(strokes)),
        "agent_greedy_paint_steps": float(np.mean(greedy_strokes)),
        "agent_params": (f"moving average (decay {train_lib.ema_decay(config)})"
                         if state.policy_ema is not None else "online"),
    }
    if classifier is not None:
        result["classifier"] = {
            "weights": digit_classifier.DEFAULT_WEIGHTS.name,
            "heldout_accuracy": classifier.meta.get("heldout_accuracy"),
        }

    if config.conditional or classifier is not None:
        train = data_lib.load(config.dataset, "train", image_size=size, channels=channels,
                              data_dir=config.data_dir or None,
                              max_examples=_MAX_REFERENCE_TRAIN)
        result["reference_train_images"] = int(len(train.images))
    if config.conditional:
        train_x = train.as_float()
        references = {
            "mean_train_image": metrics_lib.mean_image(train_x, n),
            "nearest_train_image": metrics_lib.nearest_neighbours(train_x, real),
        }
        # Class means need every held-out class among the training classes (not so for
        # Omniglot, whose held-out alphabets are new).
        if labels is not None and set(labels.tolist()) <= set(train.labels.tolist()):
            references["class_mean_train_image"] = metrics_lib.class_mean_images(
                train_x, train.labels, labels
            )
        for s in _BLUR_SIGMAS_28:
            references[f"target_blurred_{s}px_at_28"] = metrics_lib.gaussian_blur(
                real, s * size / 28
            )
        rows = conditional_metrics({**painters, **references}, real, labels, classifier)
        result.update({k: rows.pop(k) for k in agent_rows})
        result["baselines"] = {k: rows.pop(k) for k in ("blank_canvas", "random_policy")}
        result["references"] = rows
    elif classifier is not None:
        # As many training digits as samples: the distance that N real digits reach.
        count = min(n, len(train.images))
        pick = np.sort(np.asarray(
            jax.random.choice(k_train, len(train.images), (count,), replace=False)))
        references = {"real_train_images": train.as_float()[pick]}
        rows = unconditional_metrics({**painters, **references}, real, classifier)
        result.update({k: rows.pop(k) for k in agent_rows})
        result["baselines"] = {k: rows.pop(k) for k in ("blank_canvas", "random_policy")}
        result["references"] = rows
        result["num_real"] = int(len(real))
    else:
        logging.warning("no classifier for dataset %s: only ink is reported", config.dataset)
        result.update({k: {"ink": _ink(painters[k])} for k in agent_rows})
        result["baselines"] = {
            k: {"ink": _ink(v)} for k, v in painters.items() if not k.startswith("agent")
        }
        result["references"] = {}

    k = min(grid_samples, n)
    _to_pil(sample_grid(agent[:k], targets[:k] if targets is not None else None)).save(
        out_dir / "samples.png"
    )
    _to_pil(sample_grid(greedy[:k], targets[:k] if targets is not None else None)).save(
        out_dir / "samples_greedy.png"
    )
    _to_pil(make_grid(random_policy[:k], ncols=8)).save(out_dir / "random_policy.png")
    gif_targets = targets[: frames.shape[1]] if targets is not None else None
    save_gif(out_dir / "painting.gif", gif_frames(frames, gif_targets))
    result["seconds"] = round(time.perf_counter() - start_time, 1)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a plain-text table, one row per painter."""
    rows = [("agent (sampled actions)", result["agent"])]
    if "agent_greedy" in result:
        rows.append(("agent (greedy actions)", result["agent_greedy"]))
    if "agent_online" in result:
        rows.append(("agent, online params", result["agent_online"]))
    if "agent_online_greedy" in result:
        rows.append(("agent, online, greedy", result["agent_online_greedy"]))
    rows += [(f"baseline: {k}", v) for k, v in result["baselines"].items()]
    rows += [(f"reference: {k}", v) for k, v in result["references"].items()]
    if result["conditional"]:
        cols = [("relative_mse", "MSE / blank"), ("mse", "MSE"),
                ("recognised_as_target", "read as target"), ("ink", "ink")]
    elif "frechet_distance" in result["agent"]:
        cols = [("frechet_distance", "Fréchet dist."), ("confident_fraction", "confident"),
                ("class_entropy", "class entropy"),
                ("predicted_class_entropy", "argmax entropy"), ("ink", "ink")]
    else:
        cols = [("ink", "ink")]
    cols = [c for c in cols if c[0] in result["agent"]]
    width = max(len(name) for name, _ in rows) + 2
    lines = ["".ljust(width) + "".join(h.rjust(16) for _, h in cols)]
    for name, row in rows:
        lines.append(name.ljust(width) + "".join(
            (f"{row[k]:.4f}" if k in row else "-").rjust(16) for k, _ in cols))
    head = (f"{result['dataset']} {'conditional' if result['conditional'] else 'unconditional'}"
            f", step {result['step']}, {result['num_episodes']} held-out episodes"
            f" ({result['split']} split), canvas {result['canvas'][0]}, "
            f"{result['agent_paint_steps']:.1f} paint steps / episode")
    if result.get("agent_params", "online") != "online":
        head += f"\nagent: the {result['agent_params']} of its parameters"
    if not result["conditional"] and "frechet_distance" in result["agent"]:
        head += "\nFréchet distance to held-out real digits on the digit classifier's features"
    return head + "\n" + "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        workdir, step, folder = resolve_run(_WORKDIR.value, _CHECKPOINT.value)
        out = pathlib.Path(_OUT.value) if _OUT.value else None
        result = evaluate(workdir, step, out_dir=out, num_episodes=_NUM_EPISODES.value,
                          batch_size=_BATCH.value, gif_episodes=_GIF_EPISODES.value,
                          grid_samples=_GRID.value, seed=_SEED.value, checkpoints=folder)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    print(format_table(result))
    out = pathlib.Path(_OUT.value) if _OUT.value else workdir / "eval"
    print(f"wrote {out / 'samples.png'}, {out / 'painting.gif'}, {out / 'metrics.json'} "
          f"in {result['seconds']:.0f} s")


if __name__ == "__main__":
    app.run(main)
