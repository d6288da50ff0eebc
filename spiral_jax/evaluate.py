"""Evaluates a trained run: pictures, a painting GIF and metrics with baselines.

`evaluate(workdir)` loads `<workdir>/config.json` (as `spiral_jax.train` writes it) and
the latest (or a given) checkpoint, paints `num_episodes` episodes and writes to
`<workdir>/eval/` (or `out_dir`):

* `samples.png`: final canvases; for a conditional run, pairs (target, painting);
* `samples_greedy.png`: the same with the agent's most likely actions instead of
  sampled ones (each action part the argmax given the parts before it);
* `painting.gif`: several episodes painted stroke by stroke, one frame per step
  (T + 1 frames: the blank canvas, then one per action; the bar at the bottom shows
  the step); for a conditional run the targets are shown above;
* `random_policy.png`: final canvases of the random-policy baseline, for comparison;
* `metrics.json`: the numbers `format_table` prints.

Metrics (`spiral_jax.metrics`), all on the dataset's held-out split, for the agent as
trained (sampling its actions) and greedy. A run that keeps a moving average of the
policy's parameters (`learner.ema_decay`) is evaluated with the average, and the
learner's own parameters are painted beside it (`agent_online` sampling its actions,
`agent_online_greedy` greedy), with the same key:

* conditional: mean squared error to the target, as a fraction of a blank canvas's
  (`relative_mse`; for a scenes run, of the empty floor's, the `blank_canvas` row), for
  the agent and, measured in the same run, a blank canvas, a
  random policy and reference images (`spiral_jax.baselines`: the mean training digit,
  the mean training digit of the target's class, the nearest training digit, the
  target blurred); for digit datasets, also the fraction of paintings that the digit
  classifier reads as the target's digit;
* unconditional, digit datasets: the Fréchet distance between held-out real digits and
  the paintings on the digit classifier's features, and the classifier's confident
  fraction and class entropy; for the same baselines and for real training digits
  (the floor that N samples can reach).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from spiral_jax import action_space, baselines, digit_classifier, environments, experiment, pictures
from spiral_jax import checkpoints as checkpoints_lib
from spiral_jax import datasets as data_lib
from spiral_jax import metrics as metrics_lib
from spiral_jax import population as population_lib
from spiral_jax.experiment import Experiment, TrainState
from spiral_jax.image_grid import make_grid
from spiral_jax.population_loop import best_member

# Training images for the references (all of mnist5k's 4,000).
MAX_REFERENCE_TRAIN = 5000


# ------------------------------------------------------------------------------------
# Loading a run.


@dataclasses.dataclass
class Run:
    """A trained run restored at one checkpoint."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    exp: Experiment
    state: TrainState
    step: int
    folder: str  # the checkpoint folder it came from (`checkpoints.FOLDERS`)
    # A population run: `state` is its best member's (lowest fitness in the
    # checkpoint), `population_state` the whole population, `member` the best's index.
    population_state: TrainState | None = None
    member: int | None = None

    def members(self) -> list[TrainState]:
        """Every member's state of a population run (empty for a single agent)."""
        if self.population_state is None:
            return []
        return [population_lib.member(self.population_state, i,
                                      self.exp.population.shared_disc)
                for i in range(self.exp.population.size)]


def resolve_run(
    workdir: str | None, checkpoint: str | None
) -> tuple[pathlib.Path, int | None, str]:
    """(workdir, step or None for the latest, checkpoint folder) from the command line's
    --workdir or --checkpoint; ValueError if unusable."""
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of --workdir=DIR or --checkpoint=DIR/checkpoints/STEP")
    if checkpoint is not None:
        path = pathlib.Path(checkpoint).resolve()
        if not path.name.isdigit() or path.parent.name not in checkpoints_lib.FOLDERS:
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
    return path, None, checkpoints_lib.CHECKPOINTS


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The run's config as `spiral_jax.train` wrote it (JSON; tuples come back as lists,
    which the constructors accept)."""
    path = workdir / "config.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist (not a training run?)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_state(exp: Experiment, workdir: pathlib.Path, step: int | None,
                  folder: str = checkpoints_lib.CHECKPOINTS) -> tuple[TrainState, int]:
    """The run's TrainState at `step` (latest when None) in `workdir/folder`, and that step."""
    mngr = checkpoints_lib.reader(workdir, folder)
    try:
        steps = list(mngr.all_steps())
        if not steps:
            raise ValueError(f"no checkpoints in {workdir / folder}")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ValueError(f"no checkpoint for step {step}; available: {sorted(steps)}")
        # A fresh state gives the shapes, dtypes and shardings to restore into.
        like = exp.init_state(jax.random.PRNGKey(exp.config.seed))
        state = checkpoints_lib.restore_state(mngr, step, like)
    finally:
        mngr.close()
    return state, step


def load_run(workdir: pathlib.Path, step: int | None, folder: str,
             dataset: data_lib.ImageDataset | None = None) -> Run:
    """The run in `workdir` at `step` (latest when None) of its `folder`. `dataset`
    replaces the config's training images (painting needs none, so a placeholder spares
    loading them)."""
    config = load_config(workdir)
    exp = experiment.build(config, dataset=dataset)
    state, step = restore_state(exp, workdir, step, folder)
    if not exp.population.stacked:
        return Run(workdir, config, exp, state, int(step), folder)
    best = best_member(state)
    return Run(workdir, config, exp,
               population_lib.member(state, best, exp.population.shared_disc), int(step),
               folder, population_state=state, member=best)


@dataclasses.dataclass
class HeldOut:
    """What the paintings are measured against: held-out images and their classifier."""

    real: np.ndarray  # float [<= num_episodes, H, W, C]
    labels: np.ndarray | None  # their classes, for labelled datasets
    classifier: digit_classifier.DigitClassifier | None  # digit datasets only
    num_episodes: int  # episodes to paint (conditional: at most the split)
    conditional: bool

    @property
    def targets(self) -> np.ndarray | None:
        """The agent's targets: the held-out images, for a conditional run."""
        return self.real if self.conditional else None


def load_heldout(run: Run, num_episodes: int) -> HeldOut:
    """The dataset's test split (at most `num_episodes` images) and, for digits, the
    shipped digit classifier; ValueError when too few for a Fréchet distance."""
    config, env = run.config, run.exp.env
    heldout = data_lib.load(config.dataset, "test", image_size=env.canvas_width,
                            channels=env.channels, data_dir=config.data_dir or None,
                            max_examples=num_episodes,
                            invert=bool(config.get("invert_images", False)))
    n = num_episodes if not config.conditional else min(num_episodes, len(heldout.images))
    labels = heldout.labels[:n] if heldout.num_classes else None
    is_digits = config.dataset in digit_classifier.DATASETS
    if is_digits and not config.conditional and n < 2:
        raise ValueError(f"num_episodes={n}: a Fréchet distance needs at least 2 episodes")
    classifier = digit_classifier.load_default() if is_digits else None
    return HeldOut(heldout.as_float()[:n], labels, classifier, n, bool(config.conditional))


# ------------------------------------------------------------------------------------
# Painting.


def paint(exp: Experiment, params: Any, key: jax.Array, num_episodes: int, batch: int,
          targets: np.ndarray | None = None, keep_trajectory: int = 0,
          greedy: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Final canvases [N, H, W, C] of N agent episodes (in batches of `batch`, the i-th
    with `fold_in(key, i)`), the number of paint steps of each, and the canvases
    [T + 1, k, H, W, C] of the first `keep_trajectory` episodes (c_0 .. c_T).
    `greedy`: most likely actions."""
    batch = min(batch, num_episodes)
    sampler = exp.sampler(batch, greedy)
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
        draws = action_space.changes_picture(traj.action, exp.agent.action_spec)
        strokes.append(np.asarray(jnp.sum(draws, axis=0))[:n])
        if i == 0 and keep_trajectory:
            k = min(keep_trajectory, n)
            obs = np.asarray(traj.observation["canvas"][:, :k])
            frames = np.concatenate([obs, np.asarray(traj.final_canvas)[None, :k]])
    return np.concatenate(finals), np.concatenate(strokes), frames


@dataclasses.dataclass
class Paintings:
    """Final canvases by painter (the agent's rows first, then the baselines)."""

    painters: dict[str, np.ndarray]
    agent_rows: list[str]  # the painters that are the agent
    strokes: np.ndarray  # paint steps of each sampled episode
    greedy_strokes: np.ndarray
    frames: np.ndarray  # canvases [T + 1, k, H, W, C] of the first k sampled episodes


def paint_all(run: Run, heldout: HeldOut, k_agent: jax.Array, k_random: jax.Array,
              batch: int, gif_episodes: int) -> Paintings:
    """The agent (sampled and greedy), a blank canvas and the random policy; with an
    average of the parameters kept, "agent" is the average and "agent_online" the
    parameters the learner last reached, painted with the same key (so that an average
    equal to the parameters scores exactly the same)."""
    n, targets, state = heldout.num_episodes, heldout.targets, run.state
    agent, strokes, frames = paint(run.exp, state.eval_params, k_agent, n, batch, targets,
                                   keep_trajectory=gif_episodes)
    greedy, greedy_strokes, _ = paint(run.exp, state.eval_params, k_agent, n, batch,
                                      targets, greedy=True)
    blank = np.broadcast_to(environments.blank_canvas(run.exp.env), agent.shape)
    painters = {"agent": agent, "agent_greedy": greedy,
                "blank_canvas": blank.astype(agent.dtype),
                "random_policy": baselines.paint_random(run.exp.env, k_random, n, batch)}
    agent_rows = ["agent", "agent_greedy"]
    if state.policy_ema is not None:
        painters["agent_online"], _, _ = paint(run.exp, state.policy_params, k_agent, n,
                                               batch, targets)
        painters["agent_online_greedy"], _, _ = paint(run.exp, state.policy_params, k_agent,
                                                      n, batch, targets, greedy=True)
        agent_rows += ["agent_online", "agent_online_greedy"]
    for i, member in enumerate(run.members()):  # a population: every member, sampled
        painters[f"agent_member_{i}"], _, _ = paint(run.exp, member.eval_params, k_agent, n,
                                                    batch, targets)
        agent_rows.append(f"agent_member_{i}")
    return Paintings(painters, agent_rows, strokes, greedy_strokes, frames)


# ------------------------------------------------------------------------------------
# Metrics.


def _ink(canvases: np.ndarray, blank: float | np.ndarray = 1.0) -> float:
    """How far canvases are from the blank one: mean 1 - canvas on white; on a scene's
    floor, where objects may be lighter or darker, the mean absolute difference."""
    if isinstance(blank, float):
        return float(np.mean(blank - canvases))
    return float(np.mean(np.abs(canvases - blank)))


def conditional_metrics(canvases: dict[str, np.ndarray], targets: np.ndarray,
                        labels: np.ndarray | None,
                        classifier: digit_classifier.DigitClassifier | None,
                        blank: float | np.ndarray = 1.0) -> dict[str, dict]:
    """Per painter: relative (to `blank`, the environment's empty canvas) and absolute
    MSE to targets, ink, and (digits) the fraction the classifier reads as the target's
    class."""
    out = {}
    for name, c in canvases.items():
        row = {
            "relative_mse": metrics_lib.relative_mse(c, targets, blank),
            "mse": float(np.mean(metrics_lib.mse_per_image(c, targets))),
            "ink": _ink(c, blank),
        }
        if classifier is not None and labels is not None:
            row["recognised_as_target"] = float(np.mean(classifier.predict(c) == labels))
        out[name] = row
    return out


def unconditional_metrics(canvases: dict[str, np.ndarray], real: np.ndarray,
                          classifier: digit_classifier.DigitClassifier) -> dict[str, dict]:
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


def measure(run: Run, heldout: HeldOut, painted: Paintings,
            k_train: jax.Array) -> dict[str, Any]:
    """The metrics' part of metrics.json: a row per agent painter, and "baselines" and
    "references" rows; with neither targets nor a classifier, only ink."""
    config, painters = run.config, painted.painters
    if not config.conditional and heldout.classifier is None:
        logging.warning("no classifier for dataset %s: only ink is reported", config.dataset)
        result: dict[str, Any] = {k: {"ink": _ink(painters[k])} for k in painted.agent_rows}
        result["baselines"] = {
            k: {"ink": _ink(v)} for k, v in painters.items() if not k.startswith("agent")
        }
        result["references"] = {}
        return result
    env = run.exp.env
    train = data_lib.load(config.dataset, "train", image_size=env.canvas_width,
                          channels=env.channels, data_dir=config.data_dir or None,
                          max_examples=MAX_REFERENCE_TRAIN,
                          invert=bool(config.get("invert_images", False)))
    result = {"reference_train_images": int(len(train.images))}
    if config.conditional:
        references = baselines.references(train, heldout.real, heldout.labels)
        rows = conditional_metrics({**painters, **references}, heldout.real, heldout.labels,
                                   heldout.classifier, environments.blank_canvas(env))
    else:
        # As many training digits as samples: the distance that N real digits reach.
        references = baselines.real_train_images(train, k_train, heldout.num_episodes)
        rows = unconditional_metrics({**painters, **references}, heldout.real,
                                     heldout.classifier)
        result["num_real"] = int(len(heldout.real))
    result.update({k: rows.pop(k) for k in painted.agent_rows})
    result["baselines"] = {k: rows.pop(k) for k in ("blank_canvas", "random_policy")}
    result["references"] = rows
    return result


def describe(run: Run, heldout: HeldOut, painted: Paintings, seed: int) -> dict[str, Any]:
    """What was evaluated: the run, checkpoint, data, canvas, parameters, classifier."""
    env = run.exp.env
    result: dict[str, Any] = {
        "workdir": str(run.workdir),
        "step": run.step,
        "checkpoint": f"{run.folder}/{run.step}",
        "dataset": run.config.dataset,
        "split": "test",
        "conditional": bool(run.config.conditional),
        "canvas": [env.canvas_width, env.canvas_width, env.channels],
        "episode_length": env.episode_length,
        "num_episodes": heldout.num_episodes,
        "seed": seed,
        "agent_paint_steps": float(np.mean(painted.strokes)),
        "agent_greedy_paint_steps": float(np.mean(painted.greedy_strokes)),
        "agent_params": (f"moving average (decay {float(run.exp.learner.ema_decay)})"
                         if run.state.policy_ema is not None else "online"),
    }
    if run.population_state is not None:
        members = jax.device_get(run.population_state.members)
        result["population"] = {
            "size": run.exp.population.size, "best_member": run.member,
            **{k: [float(v) for v in values] for k, values in members.items()},
            # None for a member not measured yet (not `population.UNMEASURED`'s sentinel)
            "fitness": [float(v) if m else None for v, m in
                        zip(members["fitness"], population_lib.measured(members["fitness"]),
                            strict=True)],
        }
    if heldout.classifier is not None:
        result["classifier"] = {
            "weights": digit_classifier.DEFAULT_WEIGHTS.name,
            "heldout_accuracy": heldout.classifier.meta.get("heldout_accuracy"),
        }
    return result


# ------------------------------------------------------------------------------------
# The whole evaluation.


def write_pictures(out_dir: pathlib.Path, painted: Paintings, targets: np.ndarray | None,
                   grid_samples: int) -> None:
    """samples.png, samples_greedy.png, random_policy.png and painting.gif."""
    painters = painted.painters
    k = min(grid_samples, len(painters["agent"]))
    grid_targets = targets[:k] if targets is not None else None
    pictures.save_png(out_dir / "samples.png",
                      pictures.sample_grid(painters["agent"][:k], grid_targets))
    pictures.save_png(out_dir / "samples_greedy.png",
                      pictures.sample_grid(painters["agent_greedy"][:k], grid_targets))
    pictures.save_png(out_dir / "random_policy.png",
                      make_grid(painters["random_policy"][:k], ncols=8))
    frames = painted.frames
    gif_targets = targets[: frames.shape[1]] if targets is not None else None
    pictures.save_gif(out_dir / "painting.gif", pictures.gif_frames(frames, gif_targets))


def _check_arguments(checkpoints: str, **counts: Any) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    if checkpoints not in checkpoints_lib.FOLDERS:
        raise ValueError(
            f"checkpoints={checkpoints!r} must be one of {', '.join(checkpoints_lib.FOLDERS)}"
        )


def evaluate(workdir: pathlib.Path | str, step: int | None = None, *,
             out_dir: pathlib.Path | str | None = None, num_episodes: int = 1000,
             batch_size: int = 250, gif_episodes: int = 8, grid_samples: int = 32,
             seed: int = 0, checkpoints: str = checkpoints_lib.CHECKPOINTS) -> dict[str, Any]:
    """Evaluates the run in `workdir` at `step` (latest when None) of its `checkpoints`
    folder; writes the pictures and metrics.json to `out_dir` (default <workdir>/eval)
    and returns the metrics. ValueError for bad arguments or a run it cannot load."""
    _check_arguments(checkpoints, num_episodes=num_episodes, batch_size=batch_size,
                     gif_episodes=gif_episodes, grid_samples=grid_samples)
    start_time = time.perf_counter()
    run = load_run(pathlib.Path(workdir), step, checkpoints)
    out_dir = pathlib.Path(out_dir) if out_dir is not None else run.workdir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    heldout = load_heldout(run, num_episodes)

    k_agent, k_random, k_train = jax.random.split(jax.random.PRNGKey(seed), 3)
    painted = paint_all(run, heldout, k_agent, k_random, batch_size, gif_episodes)
    result = describe(run, heldout, painted, seed)
    result.update(measure(run, heldout, painted, k_train))
    write_pictures(out_dir, painted, heldout.targets, grid_samples)
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
    rows += [(f"population member {k.rsplit('_', 1)[1]}", v) for k, v in result.items()
             if k.startswith("agent_member_")]
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
    if "population" in result:
        pop = result["population"]
        which = ("the fittest in training" if any(f is not None for f in pop["fitness"])
                 else "no fitness measured in training")
        head += f"\nagent: population member {pop['best_member']} of {pop['size']}, {which}"
    if not result["conditional"] and "frechet_distance" in result["agent"]:
        head += "\nFréchet distance to held-out real digits on the digit classifier's features"
    return head + "\n" + "\n".join(lines)
