r"""Renders episodes with the real libmypaint into an npz in the fixtures' format.

Random episodes (`--mode=random`) draw their actions as the test fixtures
`tests/fixtures/libmypaint_episodes_small*.npz` were drawn: `numpy.random.default_rng
(seed)`, then, part by part in SPIRAL's spec order, flag = `rng.random((K, T)) < p_paint`
and every other part `rng.integers(0, n, (K, T))` (on move steps the unused parts are
drawn too, and ignored). The fixtures are (tests/fixtures/README.md)

  python -m experiments.make_libmypaint_episodes \
      --out=tests/fixtures/libmypaint_episodes_small.npz --episodes=16 --seed=0 --jitter=true
  python -m experiments.make_libmypaint_episodes \
      --out=tests/fixtures/libmypaint_episodes_small_nojitter.npz --episodes=16 --seed=0 \
      --jitter=false

Single-stroke episodes (`--mode=single_strokes`) are for debugging a renderer: reset and
one black paint stroke from the pen's reset position (0, 0), for every brush size, at
pressure indices 0, 4 and 9, over a fixed list of control/end points plus a few drawn
from `--seed`.

Output arrays: `actions_<name>` int32 [K, T]; `canvases` uint8 [K, T+1, W, W, 3] with
SPIRAL's move bug; `canvases_fixed_move` with the pen recorded correctly after a move;
`meta_json`. Float canvas = uint8 / 255.

  python -m experiments.make_libmypaint_episodes --out=/tmp/heldout/episodes_seed1_jitter.npz \
      --episodes=64 --seed=1 --jitter=true
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys

import numpy as np
from absl import app, flags

from tools import native_libmypaint as native
from tools.libmypaint_episodes import (
    SINGLE_STROKE_PRESSURES,
    SINGLE_STROKE_RANDOM_GEOMETRIES,
    sample_actions,
    single_stroke_actions,
)

_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_MODE = flags.DEFINE_enum("mode", "random", ["random", "single_strokes"], "Which episodes.")
_EPISODES = flags.DEFINE_integer("episodes", 16, "Random episodes to render.")
_STEPS = flags.DEFINE_integer("steps", 19, "Steps per random episode (after reset).")
_SEED = flags.DEFINE_integer("seed", 0, "numpy default_rng seed for the actions.")
_JITTER = flags.DEFINE_boolean("jitter", True, "Brush jitter (random offsets, radius noise).")
_P_PAINT = flags.DEFINE_float("p_paint", 0.7, "Probability of flag = 1 (paint).")
_CANVAS_WIDTH = flags.DEFINE_integer("canvas_width", 64, "Canvas side in pixels.")
_GRID_WIDTH = flags.DEFINE_integer("grid_width", 32, "Action grid side.")
_RECORD_DABS = flags.DEFINE_boolean(
    "record_dabs",
    None,
    "Also store every dab libmypaint drew (dabs, dabs_episode, dabs_step) for the "
    "fixed-move rendering. Default: on for single_strokes, off for random.",
)

def _deb_version(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def render_dataset(
    actions: dict[str, np.ndarray], record_dabs: bool = False, **settings
) -> dict[str, np.ndarray]:
    """Both move semantics for the same actions (and the dabs of the fixed one)."""
    out = {"canvases": native.render_episodes(actions, spiral_move_bug=True, **settings)}
    if record_dabs:
        canvases, dabs, episode, step = native.render_episodes_with_dabs(actions, **settings)
        out.update(dabs=dabs, dabs_episode=episode, dabs_step=step)
    else:
        canvases = native.render_episodes(actions, **settings)
    out["canvases_fixed_move"] = canvases
    return out


def main(argv: list[str]) -> None:
    del argv
    if not native.available():
        sys.exit(f"make_libmypaint_episodes: {native.unavailable_reason()}")
    settings = dict(
        canvas_width=_CANVAS_WIDTH.value,
        grid_width=_GRID_WIDTH.value,
        brush_sizes=native.DEFAULT_BRUSH_SIZES,
        use_color=True,
        use_pressure=True,
        jitter=_JITTER.value,
    )
    spec = native.NativeLibMyPaint(**settings).action_spec
    meta: dict = {}
    if _MODE.value == "random":
        actions = sample_actions(_SEED.value, _EPISODES.value, _STEPS.value, _P_PAINT.value, spec)
        meta["action_sampling"] = (
            "numpy default_rng(seed); in spec order: flag = rng.random((K, T)) < p_paint, "
            "others rng.integers(0, n, (K, T)) (experiments/make_libmypaint_episodes.py)"
        )
        meta["p_paint"] = _P_PAINT.value
    else:
        actions, info = single_stroke_actions(
            _SEED.value, len(settings["brush_sizes"]), _GRID_WIDTH.value
        )
        meta["action_sampling"] = (
            "single black paint stroke from the reset pen (0, 0): every size x pressure "
            f"indices {list(SINGLE_STROKE_PRESSURES)} x geometries (fixed list + "
            f"{SINGLE_STROKE_RANDOM_GEOMETRIES} drawn from default_rng(seed))"
        )
        meta["strokes"] = info
    record_dabs = _RECORD_DABS.value
    if record_dabs is None:
        record_dabs = _MODE.value == "single_strokes"
    if record_dabs:
        meta["dabs"] = (
            "every draw_dab call of the canvases_fixed_move rendering: dabs float32 [N, "
            f"{len(native.DAB_FIELDS)}] with fields dab_fields, dabs_episode and dabs_step "
            "(t >= 1, the canvas index that first shows the dab)"
        )
        meta["dab_fields"] = list(native.DAB_FIELDS)
    canvases = render_dataset(actions, record_dabs=record_dabs, **settings)
    k_eps, t_steps = actions["flag"].shape
    brush_sha = None
    try:
        with open(native.find_brush_file(), "rb") as f:
            brush_sha = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        pass
    meta.update(
        canvases=(
            "uint8 RGB; float canvas = uint8 / 255; index [episode, t, row(y), col(x), "
            "channel]; t=0 is after reset (all white)"
        ),
        canvases_fixed_move_semantics="after a move to (y, x) the next stroke starts at (y, x)",
        canvases_move_semantics=(
            "upstream SPIRAL: after a flag=0 move to (y, x) the next stroke starts at (y, y)"
        ),
        created_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        env=dict(
            brush_file=native.find_brush_file(),
            brush_sha256=brush_sha,
            brush_sizes=list(settings["brush_sizes"]),
            canvas_width=settings["canvas_width"],
            grid_width=settings["grid_width"],
            color_values=native.COLOR_VALUES.tolist(),
            pressure_values=native.PRESSURE_VALUES.tolist(),
            disable_brush_jitter=not settings["jitter"],
            dtime=native.DTIME,
            episode_length=t_steps + 1,
            fresh_brush_per_episode=True,
            strokes_per_step=native.STROKES_PER_STEP,
            use_color=True,
            use_pressure=True,
        ),
        episodes=int(k_eps),
        generator="experiments/make_libmypaint_episodes.py",
        grid="index = gy * grid_width + gx; canvas coord = canvas_width * g / grid_width",
        libmypaint=native.find_library(),
        libmypaint_deb=_deb_version("libmypaint-1.5-1"),
        mypaint_brushes_deb=_deb_version("mypaint-brushes"),
        mode=_MODE.value,
        numpy=np.__version__,
        python=platform.python_version(),
        seed=_SEED.value,
        steps=int(t_steps),
    )
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    np.savez_compressed(
        _OUT.value,
        **{f"actions_{n}": a for n, a in actions.items()},
        **canvases,
        meta_json=np.array(json.dumps(meta)),
    )
    print(f"wrote {_OUT.value}: {k_eps} episodes x {t_steps} steps, jitter={settings['jitter']}")


if __name__ == "__main__":
    app.run(main)
