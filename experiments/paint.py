r"""Paints with a trained agent and writes the canvas, a GIF and the stroke program.

    python -m experiments.paint --agent=mnist5k_conditional --target=digit.png --out=DIR
    python -m experiments.paint --agent=mnist5k --num=8 --out=DIR
    python -m experiments.paint --checkpoint=runs/mnist5k_conditional --target=x.png --nogreedy

`--agent` names a pretrained agent (`spiral_jax/pretrained.py`), `--checkpoint` a run of
your own (its workdir, its checkpoints/ folder, or one checkpoints/<step>). Writes
canvas.png, painting.gif, program.json and program.svg per painting (numbered for
several) to `--out`. What each holds: `spiral_jax/paint.py`, docs/programs.md.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

from spiral_jax import paint

_AGENT = flags.DEFINE_string("agent", None, "A pretrained agent's name.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A run's workdir, its checkpoints/ folder, or one checkpoints/<step>."
)
_TARGET = flags.DEFINE_string(
    "target", None, "Conditional agents: the image to paint (PNG/JPEG, any size, colour or "
    "grey; converted to the canvas: dark ink on white, padded square, resized)."
)
_NUM = flags.DEFINE_integer("num", 1, "Paintings to make (of the target, if conditional).")
_GREEDY = flags.DEFINE_bool(
    "greedy", None, "--greedy: the agent's most likely strokes; --nogreedy: sampled. Default: "
    "greedy for conditional agents, sampled for unconditional ones (greedy, they draw "
    "much the same strokes whatever the noise)."
)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (the episodes' noise and sampling).")
_OUT = flags.DEFINE_string("out", "paintings", "Output directory.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    out = pathlib.Path(_OUT.value)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out={out} is a file, not a directory")
        workdir, step, folder = paint.resolve_source(_AGENT.value, _CHECKPOINT.value)
        _, targets = paint.prepare(workdir, _TARGET.value, _NUM.value)
    except (ValueError, FileNotFoundError) as e:  # before anything compiles
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    try:
        run = paint.load(workdir, step, folder)
    except ValueError as e:  # parameters that do not fit their config.json
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    source = {"agent": _AGENT.value} if _AGENT.value else {"checkpoint": _CHECKPOINT.value}
    if _TARGET.value:
        source["target"] = _TARGET.value
    paintings = paint.paint(run, targets, _NUM.value, _SEED.value, _GREEDY.value, source)
    written = paint.write(out, paintings)
    strokes = [len(p.program.strokes) for p in paintings]
    print(f"painted {len(paintings)} episode(s) with {run.workdir} at step {run.step} "
          f"({', '.join(map(str, strokes))} strokes); wrote {len(written)} files to {out}/")


if __name__ == "__main__":
    app.run(main)
