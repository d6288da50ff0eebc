"""Painting with a trained agent into files: the canvas, a GIF and the program.

`python -m experiments.paint` runs these in order; everything that can be wrong with
the input fails in `resolve_source` or `prepare`, in one line, before anything
compiles:

1. `resolve_source`: a pretrained agent's name (`spiral_jax.pretrained`: its folder,
   with `pretrained.PARAMS` as the checkpoint folder, its parameters' hash checked) or
   a checkpoint (a training run's workdir, its `checkpoints/` or `best_checkpoints/`
   folder, or one `<step>/` in them, or a copied pretrained agent's folder) ->
   (workdir, step, folder);
2. `prepare`: the run's config, and for a conditional agent the target image, read and
   converted to the canvas convention (`spiral_jax.image_files`);
3. `load`: the run restored as `spiral_jax.evaluate` restores it (without loading its
   training images, which painting does not need), or the pretrained agent's parameters
   in its config's experiment;
4. `paint`: episodes of the agent (greedy, or sampled), each kept with its program
   (`spiral_jax.program`);
5. `write`: per episode `canvas.png` (the final canvas, pixel for pixel), `painting.gif`
   (stroke by stroke, the target above for a conditional agent), `program.json` and
   `program.svg` (`spiral_jax.program_svg`); with several episodes, `_00`, `_01`, ...
   before each suffix.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from spiral_jax import agent as agent_lib
from spiral_jax import checkpoints as checkpoints_lib
from spiral_jax import datasets as data_lib
from spiral_jax import (
    environments,
    evaluate,
    experiment,
    image_files,
    pictures,
    pretrained,
    program_svg,
)
from spiral_jax import program as program_lib
from spiral_jax.types import is_int


@dataclasses.dataclass(frozen=True)
class Painting:
    """One episode: its program, final canvas, canvases step by step and target."""

    program: program_lib.Program
    canvas: np.ndarray  # float32 [W, W, C], as observed (8-bit levels)
    frames: np.ndarray  # float32 [T + 1, W, W, C]: blank, then after each step
    target: np.ndarray | None  # float32 [W, W, C] for a conditional agent


def resolve_source(agent: str | None, checkpoint: str | None
                   ) -> tuple[pathlib.Path, int | None, str]:
    """(workdir, step or None for the latest, checkpoint folder) of `--agent=NAME` or
    `--checkpoint=DIR`; ValueError or FileNotFoundError (one line) if unusable."""
    if (agent is None) == (checkpoint is None):
        raise ValueError("give exactly one of --agent=NAME (a pretrained agent: "
                         f"{', '.join(pretrained.AGENTS)}) or --checkpoint=DIR")
    if agent is not None:
        path = pretrained.folder(agent)
        pretrained.verify(path)
        return path, None, pretrained.PARAMS
    else:
        path = pathlib.Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"--checkpoint={checkpoint} does not exist")
        if pretrained.is_pretrained(path):  # a pretrained agent's folder, copied anywhere
            pretrained.verify(path)
            return path, None, pretrained.PARAMS
        if (path / "config.json").is_file():  # a workdir
            workdir, step, folder = path, None, checkpoints_lib.CHECKPOINTS
        elif path.name in checkpoints_lib.FOLDERS and (path.parent / "config.json").is_file():
            workdir, step, folder = path.parent, None, path.name
        else:  # <workdir>/checkpoints/<step>, or a ValueError saying what it must be
            workdir, step, folder = evaluate.resolve_run(None, checkpoint)
    where = workdir / folder
    steps = sorted(int(p.name) for p in where.iterdir() if p.name.isdigit()) \
        if where.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {where}")
    return workdir, step, folder


def canvas_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The canvas (W, W, C) of a run's config."""
    width = int(config.env.canvas_width)
    return width, width, 3 if config.env.use_color else 1


def prepare(workdir: pathlib.Path, target: str | None, num: int
            ) -> tuple[ml_collections.ConfigDict, np.ndarray | None]:
    """The run's config, and its agent's targets: float32 [num, W, W, C], the image in
    file `target` in the canvas convention (a conditional agent needs one; an
    unconditional one takes none), or None. ValueError or FileNotFoundError (one line)
    for bad input."""
    if not is_int(num) or num < 1:
        raise ValueError(f"--num={num!r} must be a positive integer")
    config = evaluate.load_config(workdir)
    if environments.name_of(config) != "libmypaint":
        raise ValueError(f"{workdir} is a {environments.name_of(config)} run: experiments.paint "
                         "writes libmypaint programs; experiments.evaluate paints scenes")
    if config.conditional and target is None:
        raise ValueError("this agent is conditional: give the image to paint, --target=IMAGE")
    if not config.conditional and target is not None:
        raise ValueError("this agent is unconditional and takes no --target; "
                         "--num=N paints N samples")
    if target is None:
        return config, None
    w, _, c = canvas_shape(config)
    image = image_files.read_image(target, image_size=w, channels=c)
    return config, np.repeat(data_lib.to_float_np(image)[None], num, axis=0)


def load(workdir: pathlib.Path, step: int | None, folder: str) -> evaluate.Run:
    """The run restored at `step` (latest when None), without its training images; for
    a pretrained agent (`folder` is `pretrained.PARAMS`), its experiment and a state
    that holds only the parameters it paints with."""
    config = evaluate.load_config(workdir)
    shape = canvas_shape(config)
    placeholder = data_lib.ImageDataset(  # one white image per device
        "placeholder", "train", np.full((jax.device_count(), *shape), 255, np.uint8),
        np.full(jax.device_count(), -1, np.int32), np.arange(jax.device_count()), None)
    if folder != pretrained.PARAMS:
        return evaluate.load_run(workdir, step, folder, dataset=placeholder)
    exp = experiment.build(config, dataset=placeholder)
    # The parameters' structure and shapes: the agent's alone, not a whole TrainState.
    like = agent_lib.init_params(exp.agent, jax.random.PRNGKey(0), exp.env.observation_shape)
    params = pretrained.load_params(workdir, like)
    step = pretrained.read_info(workdir)["step"]
    state = experiment.TrainState(
        step=np.int32(step), policy_params=params, policy_opt_state=None, disc_params=None,
        disc_spectral=None, disc_opt_state=None, replay=None)
    return evaluate.Run(workdir, config, exp, state, step, folder)


def paint(run: evaluate.Run, targets: np.ndarray | None, num: int, seed: int,
          greedy: bool | None, info: dict[str, Any] | None = None) -> list[Painting]:
    """`num` episodes of the run's agent (its parameter average, if it keeps one):
    greedy (its most likely strokes) or sampled, from `PRNGKey(seed)`. `greedy=None`:
    greedy for a conditional agent, sampled for an unconditional one, whose greedy
    samples vary little with the noise."""
    exp = run.exp
    greedy = bool(run.config.conditional) if greedy is None else greedy
    traj = jax.device_get(exp.sampler(num, greedy)(
        run.state.eval_params, jax.random.PRNGKey(seed),
        None if targets is None else jax.numpy.asarray(targets)))
    frames = np.concatenate([traj.observation["canvas"], traj.final_canvas[None]])
    info = {**(info or {}), "step": run.step, "seed": seed, "greedy": greedy}
    return [
        Painting(
            program=program_lib.from_trajectory(exp.env, traj, i, {**info, "episode": i}),
            canvas=np.asarray(traj.final_canvas[i]),
            frames=frames[:, i],
            target=None if targets is None else targets[i],
        )
        for i in range(num)
    ]


def write(out_dir: pathlib.Path, paintings: list[Painting]) -> list[pathlib.Path]:
    """Writes each painting's canvas.png, painting.gif, program.json and program.svg
    (numbered when there are several) into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = max(2, len(str(len(paintings) - 1)))
    written = []
    for i, p in enumerate(paintings):
        tag = f"_{i:0{digits}d}" if len(paintings) > 1 else ""
        paths = [out_dir / f"{name}{tag}.{ext}" for name, ext in
                 (("canvas", "png"), ("painting", "gif"), ("program", "json"),
                  ("program", "svg"))]
        pictures.save_png(paths[0], np.round(p.canvas * 255.0).astype(np.uint8))
        target = None if p.target is None else p.target[None]
        pictures.save_gif(paths[1], pictures.gif_frames(p.frames[:, None], target))
        program_lib.save(p.program, paths[2])
        paths[3].write_text(program_svg.to_svg(p.program))
        written += paths
    return written
