"""`spiral_jax.learning_curves`: reading metrics.jsonl, smoothing, plotting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from spiral_jax import learning_curves as LC


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_metrics_merges_records_of_a_step_later_values_winning(tmp_path):
    # A run killed after step 3 resumes from its step-2 checkpoint and logs 3 again;
    # an in-training evaluation at step 4 is a record of its own.
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": s, "loss": float(s)} for s in (1, 2, 3)]
           + [{"step": 3, "loss": 30.0}, {"step": 4, "loss": 4.0},
              {"step": 4, "frechet_train": 7.0}])
    records = LC.read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["loss"] == 30.0
    assert records[3] == {"step": 4, "loss": 4.0, "frechet_train": 7.0}
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        LC.read_metrics(tmp_path / "missing.jsonl")


def test_ema_matches_a_debiased_moving_average():
    x = np.array([1.0, 3.0, -2.0, 5.0])
    w = 0.6
    want, acc = [], 0.0
    for i, v in enumerate(x):
        acc = w * acc + (1 - w) * v
        want.append(acc / (1 - w ** (i + 1)))
    np.testing.assert_allclose(LC.ema(x, w), want, rtol=1e-12)
    np.testing.assert_allclose(LC.ema(x, 0.0), x)
    with pytest.raises(ValueError, match="smoothing"):
        LC.ema(x, 1.0)


def test_plot_writes_one_panel_per_metric_and_rejects_missing_metrics(tmp_path):
    runs = {
        "a": [{"step": s, "minutes": s / 10, "l2": 1.0 / s} for s in range(1, 30)],
        "b": [{"step": s, "minutes": s / 10, "l2": 2.0 / s} for s in range(1, 30)],
    }
    out = tmp_path / "curves.png"
    LC.plot(runs, ["l2"], "minutes", 0.5, out, LC.parse_hlines(["l2:0.5:blank"]))
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 10  # something was drawn
    with pytest.raises(ValueError, match="has no 'nope'"):
        LC.plot(runs, ["nope"], "minutes", 0.5, out)
    with pytest.raises(ValueError, match="METRIC:VALUE:LABEL"):
        LC.parse_hlines(["l2:0.5"])


def _has_colour(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool(np.any(np.all(np.abs(image[..., :3].astype(int) - rgb) <= 8, axis=-1)))


def test_a_plus_overlays_metrics_in_one_panel(tmp_path):
    runs = {"a": [{"step": s, "minutes": s / 10, "fd": 300.0 + s, "fd_online": 900.0 - s}
                  for s in range(1, 30)]}
    single, overlaid = tmp_path / "single.png", tmp_path / "overlaid.png"
    LC.plot(runs, ["fd"], "step", 0.0, single)
    LC.plot(runs, ["fd+fd_online"], "step", 0.0, overlaid)
    one, both = np.asarray(Image.open(single)), np.asarray(Image.open(overlaid))
    assert one.shape == both.shape  # one panel either way
    orange = (0xFF, 0x7F, 0x0E)  # matplotlib's second line colour
    assert _has_colour(both, orange) and not _has_colour(one, orange)
    with pytest.raises(ValueError, match="has no 'nope'"):
        LC.plot(runs, ["fd+nope"], "step", 0.0, overlaid)
