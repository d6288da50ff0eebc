"""Action sequences for libmypaint reference episodes (the fixtures' sampling).

Random episodes draw their actions exactly as the fixtures
`tests/fixtures/libmypaint_episodes_small*.npz` were drawn: `numpy.random.default_rng
(seed)`, then, part by part in SPIRAL's spec order, flag = `rng.random((K, T)) < p_paint`
and every other part `rng.integers(0, n, (K, T))`. Single-stroke episodes are one black
paint stroke from the reset pen, for debugging a renderer. Used by
`experiments.make_libmypaint_episodes` and the tests.
"""

from __future__ import annotations

import numpy as np

from spiral_jax.envs.libmypaint import ACTION_NAMES

# (control (gy, gx), end (gy, gx)) for single strokes from the pen at (0, 0).
SINGLE_STROKE_GEOMETRIES = (
    ((8, 8), (16, 16)),  # straight diagonal, control on the segment
    ((15, 15), (31, 31)),  # long straight diagonal to the far corner
    ((2, 2), (4, 4)),  # short stroke
    ((0, 28), (28, 28)),  # sharp curve: right along the top, then down
    ((30, 2), (10, 20)),  # curve bulging downwards
    ((16, 0), (16, 16)),  # curve ending mid-canvas
    ((12, 4), (0, 0)),  # loop back to the start point
)
SINGLE_STROKE_PRESSURES = (0, 4, 9)
SINGLE_STROKE_RANDOM_GEOMETRIES = 3


def sample_actions(
    seed: int, episodes: int, steps: int, p_paint: float, spec: dict[str, int]
) -> dict[str, np.ndarray]:
    """Random actions as the fixtures drew them (see the module docstring)."""
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes={episodes}, steps={steps}: both must be >= 1")
    if not 0.0 <= p_paint <= 1.0:
        raise ValueError(f"p_paint={p_paint}: must be in [0, 1]")
    rng = np.random.default_rng(seed)
    shape = (episodes, steps)
    out = {}
    for name, n in spec.items():
        if name == "flag":
            out[name] = (rng.random(shape) < p_paint).astype(np.int32)
        else:
            out[name] = rng.integers(0, n, size=shape).astype(np.int32)
    return out


def single_stroke_actions(
    seed: int, n_sizes: int, grid_width: int
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """One black paint step per episode over sizes x pressures x geometries ([K, 1])."""
    rng = np.random.default_rng(seed)
    scale = (grid_width - 1) / 31.0  # the fixed geometries are written for grid 32
    geometries = [
        (tuple(round(v * scale) for v in c), tuple(round(v * scale) for v in e))
        for c, e in SINGLE_STROKE_GEOMETRIES
    ]
    for _ in range(SINGLE_STROKE_RANDOM_GEOMETRIES):
        c, e = rng.integers(0, grid_width, size=(2, 2))
        geometries.append((tuple(int(v) for v in c), tuple(int(v) for v in e)))
    rows, info = [], []
    for size in range(n_sizes):
        for pressure in SINGLE_STROKE_PRESSURES:
            for (cy, cx), (ey, ex) in geometries:
                rows.append(
                    dict(
                        control=cy * grid_width + cx,
                        end=ey * grid_width + ex,
                        flag=1,
                        pressure=pressure,
                        size=size,
                        red=0,
                        green=0,
                        blue=0,
                    )
                )
                info.append(
                    dict(
                        size_index=size,
                        pressure_index=pressure,
                        control_yx=[cy, cx],
                        end_yx=[ey, ex],
                    )
                )
    actions = {name: np.array([[r[name]] for r in rows], np.int32) for name in ACTION_NAMES}
    return actions, info
