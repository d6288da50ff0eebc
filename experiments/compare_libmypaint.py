r"""How close the JAX brush is to libmypaint: mean absolute errors and a picture.

    python -m experiments.compare_libmypaint --out=docs/images/libmypaint_vs_jax.png

Renders the episodes of the test fixtures in `tests/fixtures` (or of `--episodes_dir`,
files in the same format, e.g. written by `experiments.make_libmypaint_episodes`) with
the JAX environment and prints the final-canvas and per-step mean absolute error
against libmypaint, beside a blank canvas and, for the jittered brush, libmypaint's
own noise floor (where the jitter-free file has the same actions). With `--out` it
writes a grid: each row one episode, columns libmypaint and JAX, with and without
jitter.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax.envs.libmypaint import ACTION_NAMES, LibMyPaint, play
from spiral_jax.image_grid import save_grid

_DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
_DIR = flags.DEFINE_string("episodes_dir", str(_DEFAULT_DIR), "Folder with the episode files.")
_JITTER_FILE = flags.DEFINE_string(
    "jitter_file", "libmypaint_episodes_small.npz", "Episodes rendered with jitter."
)
_NOJITTER_FILE = flags.DEFINE_string(
    "nojitter_file", "libmypaint_episodes_small_nojitter.npz", "The same, jitter off."
)
_OUT = flags.DEFINE_string("out", None, "Optional PNG of libmypaint and JAX side by side.")
_ROWS = flags.DEFINE_integer("rows", 6, "Episodes shown in the picture.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the JAX brush's jitter.")


def load_episodes(path: pathlib.Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Actions [K, T] by name, libmypaint canvases float [K, T+1, W, W, C], settings."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass --episodes_dir")
    data = np.load(path)
    actions = {k: data["actions_" + k] for k in ACTION_NAMES}
    meta = json.loads(str(data["meta_json"]))
    return actions, data["canvases_fixed_move"].astype(np.float32) / 255.0, meta.get("env", meta)


def render_jax(actions: dict[str, np.ndarray], settings: dict, jitter: bool, seed: int):
    """JAX canvases [K, T+1, W, W, C] for the same actions."""
    k, t = actions["flag"].shape
    env = LibMyPaint(
        episode_length=t + 1,
        canvas_width=settings["canvas_width"],
        grid_width=settings["grid_width"],
        brush_sizes=tuple(settings["brush_sizes"]),
        use_color=settings["use_color"],
        use_pressure=settings["use_pressure"],
        brush_jitter=jitter,
    )
    time_major = {n: jnp.asarray(actions[n].T) for n in env.action_spec()}
    keys = jax.random.split(jax.random.PRNGKey(seed), k)
    replay = jax.vmap(functools.partial(play, env), in_axes=(0, 1))
    return np.asarray(jax.jit(replay)(keys, time_major))


def mae(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(final-canvas MAE, mean per-step MAE over steps 1..T)."""
    err = np.abs(a - b).mean(axis=(2, 3, 4))
    return float(err[:, -1].mean()), float(err[:, 1:].mean())


def main(argv):
    del argv
    folder = pathlib.Path(_DIR.value)
    rows, pictures = [], {}
    for label, name, jitter in (
        ("jitter off", _NOJITTER_FILE.value, False),
        ("jitter on", _JITTER_FILE.value, True),
    ):
        actions, reference, settings = load_episodes(folder / name)
        ours = render_jax(actions, settings, jitter, _SEED.value)
        final, per_step = mae(ours, reference)
        blank = float(np.abs(1.0 - reference[:, -1]).mean())
        rows.append((label, reference.shape[0], final, per_step, blank))
        pictures[label] = (reference[:, -1], ours[:, -1])

    print(f"episodes from {folder}")
    print("| brush | episodes | final-canvas MAE | per-step MAE | blank canvas |")
    print("|---|---|---|---|---|")
    for label, k, final, per_step, blank in rows:
        print(f"| {label} | {k} | {final:.4f} | {per_step:.4f} | {blank:.4f} |")
    ref_on, _ = pictures["jitter on"]
    ref_off, _ = pictures["jitter off"]
    if ref_on.shape == ref_off.shape:
        floor = float(np.abs(ref_on - ref_off).mean())
        print(f"libmypaint jittered vs its own jitter-free rendering (final): {floor:.4f}")

    if _OUT.value:
        n = min(_ROWS.value, ref_on.shape[0])
        cells = []
        for i in range(n):
            for label in ("jitter on", "jitter off"):
                cells.extend([pictures[label][0][i], pictures[label][1][i]])
        out = pathlib.Path(_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_grid(out, np.stack(cells), ncols=4)
        print(f"wrote {out}: columns libmypaint, JAX (jitter on), libmypaint, JAX (jitter off)")


if __name__ == "__main__":
    app.run(main)
