"""Learning curves from `experiments.train`'s `metrics.jsonl` files, as PNG plots.

`experiments.train` writes every logged scalar to `<workdir>/metrics.jsonl`, one JSON
object per line with `step`, `frames` and `minutes` (training wall-clock, compilation
included, continued across resumes). `read_metrics` reads one; `plot` draws metrics
against minutes, steps or frames for several runs, TensorBoard-style smoothed.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

X_LABELS = {
    "minutes": "training minutes (this machine)",
    "step": "train step",
    "frames": "environment frames",
}


def read_metrics(path: pathlib.Path) -> list[dict]:
    """The records of a metrics.jsonl file, one per step, sorted by step. Records of
    the same step are merged, later values winning: a resumed run logs some steps
    again, and in-training evaluations are logged as records of their own."""
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file {path}: was the run made by experiments.train?")
    by_step: dict[int, dict] = {}
    with path.open() as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average, debiased at the start."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {weight}")
    out = np.empty(len(values))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1.0 - weight) * v
        norm = weight * norm + (1.0 - weight)
        out[i] = acc / norm
    return out


def parse_hlines(specs: list[str]) -> dict[str, list[tuple[float, str]]]:
    """Reference lines from "METRIC:VALUE:LABEL" strings, grouped by metric."""
    lines: dict[str, list[tuple[float, str]]] = {}
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"--hlines entry {spec!r} must be METRIC:VALUE:LABEL")
        lines.setdefault(parts[0], []).append((float(parts[1]), parts[2]))
    return lines


def plot(
    runs: dict[str, list[dict]],
    metrics: list[str],
    x: str,
    smoothing: float,
    out: pathlib.Path,
    hlines: dict[str, list[tuple[float, str]]] | None = None,
    title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hlines = hlines or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, panel in zip(axes[0], metrics, strict=True):
        # "a+b" overlays metrics a and b in one panel (a line per run and metric).
        names = panel.split("+")
        lines = [(label, records, name) for label, records in runs.items() for name in names]
        for i, (label, records, metric) in enumerate(lines):
            rows = [r for r in records if metric in r and x in r]
            if not rows:
                raise ValueError(
                    f"run {label!r} has no {metric!r} against {x!r}; it has "
                    f"{sorted(records[0]) if records else 'no records'}"
                )
            xs = np.array([r[x] for r in rows], float)
            ys = np.array([r[metric] for r in rows], float)
            color = f"C{i}"
            name = label if len(names) == 1 else (
                metric if len(runs) == 1 else f"{label}: {metric}")
            if smoothing > 0:
                ax.plot(xs, ys, color=color, alpha=0.2, lw=0.8)
            ax.plot(
                xs, ema(ys, smoothing) if smoothing > 0 else ys, color=color, lw=1.6, label=name
            )
        for j, (value, text) in enumerate(hlines.get(panel, [])):
            ax.axhline(value, color="0.3", ls=("--", ":", "-.")[j % 3], lw=1, label=text)
        ax.set_title(panel.replace("+", " and "))
        ax.set_xlabel(X_LABELS[x])
        ax.grid(alpha=0.3)
        if len(lines) > 1 or hlines.get(panel):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
