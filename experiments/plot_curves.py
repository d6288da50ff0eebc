r"""Learning curves from training runs' `metrics.jsonl` files, as one PNG.

    python -m experiments.plot_curves --runs=runs/cond --metrics=l2_to_target,strokes \
        --out=docs/images/curves_cond.png

`experiments.train` writes every logged scalar to `<workdir>/metrics.jsonl` (one JSON
object per line, with `step`, `frames` and `minutes` of training). Each metric gets
its own panel (`a+b` overlays metrics a and b in one), plotted against training
minutes (or `--x=step` / `--x=frames`); several runs share the panels, labelled by
`--labels` or by their directory names. Lines are smoothed by an exponential moving
average (`--smoothing`, 0 = raw), with the raw values drawn faintly behind. A resumed
run appends to the same file: where steps repeat, the later record wins.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from spiral_jax import learning_curves

_RUNS = flags.DEFINE_list("runs", None, "Training workdirs (each with metrics.jsonl).")
_LABELS = flags.DEFINE_list("labels", None, "Legend labels, one per run (default: dir names).")
_METRICS = flags.DEFINE_list(
    "metrics", ["episode_return"],
    "Metrics to plot, one panel each (keys of metrics.jsonl; a+b: both in one panel).",
)
_X = flags.DEFINE_enum("x", "minutes", ["minutes", "step", "frames"], "Horizontal axis.")
_SMOOTHING = flags.DEFINE_float("smoothing", 0.9, "EMA weight of the past, in [0, 1).")
_HLINES = flags.DEFINE_list(
    "hlines", [], "Reference lines METRIC:VALUE:LABEL, e.g. relative_mse:1.0:blank canvas."
)
_OUT = flags.DEFINE_string("out", None, "Output PNG.")
_TITLE = flags.DEFINE_string("title", "", "Figure title.")


def main(argv):
    del argv
    if not _RUNS.value or not _OUT.value:
        raise app.UsageError("--runs and --out are required")
    labels = _LABELS.value or [pathlib.Path(r).name for r in _RUNS.value]
    if len(labels) != len(_RUNS.value):
        raise app.UsageError(f"{len(labels)} labels for {len(_RUNS.value)} runs")
    runs = {
        lab: learning_curves.read_metrics(pathlib.Path(r) / "metrics.jsonl")
        for lab, r in zip(labels, _RUNS.value, strict=True)
    }
    out = pathlib.Path(_OUT.value)
    learning_curves.plot(
        runs,
        _METRICS.value,
        _X.value,
        _SMOOTHING.value,
        out,
        learning_curves.parse_hlines(_HLINES.value),
        _TITLE.value,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
