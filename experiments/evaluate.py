r"""Evaluates a trained run: pictures, a painting GIF and metrics with baselines.

    python -m experiments.evaluate --workdir=runs/mnist5k
    python -m experiments.evaluate --checkpoint=runs/mnist5k/checkpoints/2000
    python -m experiments.evaluate --workdir=runs/cond --num_episodes=1000

Loads `<workdir>/config.json` and the latest (or the given) checkpoint, paints
`--num_episodes` episodes, writes samples.png, samples_greedy.png, painting.gif,
random_policy.png and metrics.json to `<workdir>/eval/` (or `--out`) and prints the
metrics as a table. What each file holds and each metric means: `spiral_jax/evaluate.py`.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

from spiral_jax import evaluate

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


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    try:
        workdir, step, folder = evaluate.resolve_run(_WORKDIR.value, _CHECKPOINT.value)
        out = pathlib.Path(_OUT.value) if _OUT.value else workdir / "eval"
        result = evaluate.evaluate(
            workdir, step, out_dir=out, num_episodes=_NUM_EPISODES.value,
            batch_size=_BATCH.value, gif_episodes=_GIF_EPISODES.value,
            grid_samples=_GRID.value, seed=_SEED.value, checkpoints=folder,
        )
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    print(evaluate.format_table(result))
    print(f"wrote {out / 'samples.png'}, {out / 'painting.gif'}, {out / 'metrics.json'} "
          f"in {result['seconds']:.0f} s")


if __name__ == "__main__":
    app.run(main)
