r"""Writes a trained run's agent as a pretrained agent: config.json, params.msgpack, info.json.

    python -m experiments.export_pretrained --checkpoint=runs/mnist5k_conditional \
        --out=pretrained/mnist5k_conditional --made_with="..."

`--checkpoint` is a run as `experiments.paint` takes it (its workdir: the latest
checkpoint; its checkpoints/ or best_checkpoints/ folder; or one <step>/ in them). Keeps
only the parameters the agent paints with, the run's parameter average if it kept one
(`spiral_jax.pretrained`), and prints the folder's size.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

from spiral_jax import paint, pretrained

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The run (as experiments.paint takes).")
_OUT = flags.DEFINE_string("out", None, "The pretrained agent's folder to write.")
_MADE_WITH = flags.DEFINE_string("made_with", "", "A line on how the run was trained.")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    try:
        workdir, step, folder = paint.resolve_source(None, _CHECKPOINT.value)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    run = paint.load(workdir, step, folder)
    info = pretrained.export(
        (workdir / pretrained.CONFIG).read_text(), run.state.eval_params, Path(_OUT.value),
        step=run.step, source=f"{_CHECKPOINT.value} (step {run.step})", made_with=_MADE_WITH.value,
        averaged=run.state.policy_ema is not None)
    size = sum(p.stat().st_size for p in Path(_OUT.value).iterdir())
    print(f"wrote {_OUT.value}: step {info['step']}, {info['num_parameters']:,} parameters "
          f"({info['params']}), {size / 1e6:.2f} MB")


if __name__ == "__main__":
    app.run(main)
