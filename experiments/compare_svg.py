r"""Measures how close program.svg, rendered by resvg, is to the canvas it describes.

    python -m experiments.compare_svg --config=mnist5k --episodes=100 \
        --figure=docs/images/svg_vs_canvas_mnist5k.png          # uniform random actions
    python -m experiments.compare_svg --agent=mnist5k_conditional --episodes=100
    python -m experiments.compare_svg --checkpoint=runs/mnist5k --episodes=100

Episodes come from uniform random actions in a config's environment (`--config`,
`--jitter` to override its brush's jitter), or from an agent (`--agent` or
`--checkpoint`, painted as `experiments.paint` paints: greedy if conditional, sampled
if not, unless `--greedy` or `--nogreedy` says;
a conditional agent is shown the run's held-out images). Each episode's program is
drawn as SVG (`spiral_jax.program_svg`), rendered by resvg and compared with the canvas:
mean absolute error of pixels and IoU of inked pixels (`program_svg.compare`). Prints
one table row; `--figure` writes the first episodes as rows of canvas | SVG |
difference (grey = equal, dark = the SVG is darker). docs/programs.md has the results.
"""

from __future__ import annotations

import importlib

import numpy as np
from absl import app, flags, logging

from spiral_jax import datasets, paint, program_svg
from spiral_jax import program as program_lib
from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.image_grid import make_grid
from spiral_jax.pictures import save_png

_CONFIG = flags.DEFINE_string("config", None, "A config name: random actions in its env.")
_JITTER = flags.DEFINE_bool("jitter", None, "Override the config's brush_jitter.")
_AGENT = flags.DEFINE_string("agent", None, "A pretrained agent's name.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run (as experiments.paint takes).")
_GREEDY = flags.DEFINE_bool("greedy", None, "Agents: most likely strokes, or sampled "
                            "(default: greedy if conditional, as experiments.paint).")
_EPISODES = flags.DEFINE_integer("episodes", 100, "Episodes to measure.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_FIGURE = flags.DEFINE_string("figure", None, "PNG of the first --figure_rows episodes.")
_ROWS = flags.DEFINE_integer("figure_rows", 6, "Episodes in the figure.")


def random_episodes(config_name: str, jitter: bool | None, n: int, seed: int
                    ) -> tuple[list[program_lib.Program], np.ndarray]:
    """Programs and final canvases of n episodes of uniform random actions in a config's
    environment."""
    config = importlib.import_module(f"experiments.configs.{config_name}").get_config()
    settings = dict(config.env)
    if jitter is not None:
        settings["brush_jitter"] = jitter
    return program_lib.random_programs(LibMyPaint(**settings), n, seed)


def agent_episodes(agent: str | None, checkpoint: str | None, n: int, seed: int,
                   greedy: bool | None) -> tuple[list[program_lib.Program], np.ndarray]:
    """Programs and final canvases of n episodes of an agent (a conditional one paints
    the first n held-out images of its dataset)."""
    workdir, step, folder = paint.resolve_source(agent, checkpoint)
    run = paint.load(workdir, step, folder)
    config, env = run.config, run.exp.env
    targets = None
    if config.conditional:
        heldout = datasets.load(config.dataset, "test", image_size=env.canvas_width,
                                channels=env.channels, data_dir=config.data_dir or None,
                                max_examples=n,
                                invert=bool(config.get("invert_images", False)))
        targets = heldout.as_float()
        n = len(targets)
    paintings = paint.paint(run, targets, n, seed, greedy)
    return [p.program for p in paintings], np.stack([p.canvas for p in paintings])


def figure(path: str, canvases: np.ndarray, renders: np.ndarray) -> None:
    """Rows of canvas | SVG rendering | difference (RGB [k, W, W, 3] each), enlarged to
    about 128 pixels a tile."""
    diff = np.clip(0.5 + 0.5 * (renders - canvases), 0.0, 1.0)
    tiles = np.stack([canvases, renders, diff], axis=1).reshape((-1,) + renders.shape[1:])
    grid = make_grid(tiles, ncols=3)
    scale = max(1, 128 // canvases.shape[1])
    save_png(path, np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    if (_CONFIG.value is None) == (_AGENT.value is None and _CHECKPOINT.value is None):
        raise app.UsageError("give --config=NAME (random actions) or --agent / --checkpoint")
    if _CONFIG.value:
        programs, canvases = random_episodes(_CONFIG.value, _JITTER.value, _EPISODES.value,
                                             _SEED.value)
        source = f"random actions, {_CONFIG.value} env"
    else:
        programs, canvases = agent_episodes(_AGENT.value, _CHECKPOINT.value, _EPISODES.value,
                                            _SEED.value, _GREEDY.value)
        source = _AGENT.value or _CHECKPOINT.value
    renders = np.stack([program_svg.render(program_svg.to_svg(p)) for p in programs])
    scores = [program_svg.compare(r, c) for r, c in zip(renders, canvases, strict=True)]
    mae = np.array([s["mae"] for s in scores])
    iou = np.array([s["iou"] for s in scores])
    jitter = programs[0].settings["brush_jitter"]
    print("| episodes | jitter | MAE mean | MAE max | IoU mean | IoU min | blank MAE |")
    print(f"| {len(programs)} {source} | {'on' if jitter else 'off'} | {mae.mean():.4f} | "
          f"{mae.max():.4f} | {iou.mean():.3f} | {iou.min():.3f} | "
          f"{np.abs(1.0 - canvases).mean():.4f} |")
    if _FIGURE.value:
        k = min(_ROWS.value, len(programs))
        shown = canvases[:k] if canvases.shape[-1] == 3 else np.repeat(canvases[:k], 3, -1)
        figure(_FIGURE.value, shown, renders[:k])
        print(f"wrote {_FIGURE.value}")


if __name__ == "__main__":
    app.run(main)
