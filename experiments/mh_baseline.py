r"""SPIRAL's Metropolis-Hastings scene baseline: held-out L2 against render calls.

    python -m experiments.mh_baseline --width=32 --moves=5000 \
        --agent=runs/scenes_cpu/eval100/metrics.json --out=docs/images/scenes_mh.png

Runs one blocked Metropolis-Hastings chain (`spiral_jax.scene_mh`: Gaussian likelihood
with diagonal variance 0.25, up to 20 primitives, one object's attribute block
resampled per move, one render per move) on each of the first `--num_scenes` held-out
scenes of the `scenes` dataset (split `test`, the scenes `experiments.evaluate`
paints first), from the empty floor. It prints the mean squared error per pixel to
the targets after 1, 2, 5, 10, 20, ... render calls, for the chains' current scenes
and for the best scene each chain has visited, writes them to `--json` (default: the
PNG's name with .json), and plots them. `--agent` adds an evaluation's
`metrics.json` (run it with `--num_episodes` equal to `--num_scenes`, so that both see
the same scenes): the agent, the random policy and the empty floor, at the agent's
render calls per scene (one per action).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax import scene_data, scene_mh

_NUM = flags.DEFINE_integer("num_scenes", 100, "Held-out scenes (the test split's first).")
_WIDTH = flags.DEFINE_integer("width", 32, "Canvas side (the agent's config's).")
_MOVES = flags.DEFINE_integer("moves", 5000, "MH moves (render calls) per scene.")
_MAX = flags.DEFINE_integer("max_primitives", scene_mh.MAX_PRIMITIVES, "Object slots.")
_VARIANCE = flags.DEFINE_float("variance", scene_mh.VARIANCE, "Likelihood variance.")
_CHUNK = flags.DEFINE_integer("chunk", 250, "Moves per compiled call (progress lines).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the chains.")
_AGENT = flags.DEFINE_string("agent", None, "An evaluation's metrics.json to plot beside.")
_OUT = flags.DEFINE_string("out", None, "PNG of L2 against render calls.")
_JSON = flags.DEFINE_string("json", None, "Where to write the curves (default: --out's .json).")


def checkpoints(moves: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `moves` (and `moves` itself)."""
    out, base = [], 1
    while base <= moves:
        out += [m for m in (base, 2 * base, 5 * base) if m <= moves]
        base *= 10
    return sorted(set(out + [moves]))


def agent_rows(path: str) -> dict[str, dict]:
    """From an evaluation's metrics.json: the agent's rows and the baselines', each with
    its mean squared error and its render calls per scene."""
    metrics = json.loads(pathlib.Path(path).read_text())
    if metrics.get("dataset") != "scenes":
        raise ValueError(f"{path} is an evaluation of {metrics.get('dataset')!r}, not scenes")
    calls = int(metrics["episode_length"]) - 1
    rows = {k: {"mse": metrics[k]["mse"], "render_calls": calls}
            for k in ("agent", "agent_greedy") if k in metrics}
    rows["random_policy"] = {"mse": metrics["baselines"]["random_policy"]["mse"],
                             "render_calls": calls}
    rows["blank_canvas"] = {"mse": metrics["baselines"]["blank_canvas"]["mse"],
                            "render_calls": 0}
    rows["num_episodes"] = {"count": int(metrics["num_episodes"])}
    return rows


def plot(result: dict, out: pathlib.Path) -> None:
    """L2 against render calls (log x): MH current and best, the agent's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = np.asarray(result["render_calls"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(calls, result["mh_current_mse"], "-", color="tab:blue", label="MH, current scene")
    ax.plot(calls, result["mh_best_mse"], "--", color="tab:blue", label="MH, best so far")
    ax.axhline(result["blank_mse"], color="grey", lw=1, label="empty floor")
    styles = {"agent_greedy": ("*", "tab:red", "agent (greedy)"),
              "agent": ("o", "tab:orange", "agent (sampled)"),
              "random_policy": ("x", "black", "random policy")}
    for name, (marker, color, label) in styles.items():
        row = result.get("agent_eval", {}).get(name)
        if row is not None:
            ax.plot([row["render_calls"]], [row["mse"]], marker, color=color, ms=10,
                    label=f"{label}, {row['render_calls']} renders")
    ax.set_xscale("log")
    ax.set_xlabel("render calls per scene")
    ax.set_ylabel("mean squared error to the target")
    ax.set_title(f"{result['num_scenes']} held-out scenes, {result['width']}x{result['width']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv):
    del argv
    width, n, moves = _WIDTH.value, _NUM.value, _MOVES.value
    agent = agent_rows(_AGENT.value) if _AGENT.value else None
    if agent is not None and agent["num_episodes"]["count"] != n:
        raise app.UsageError(f"--agent evaluated {agent['num_episodes']['count']} scenes, "
                             f"not --num_scenes={n}: they would not be the same scenes")
    targets = jnp.asarray(scene_data.load("test", image_size=width, max_examples=n).as_float())
    chains = jax.vmap(functools.partial(scene_mh.init, max_objects=_MAX.value))(targets)
    pixels = width * width * 3
    blank = float(jnp.mean(chains.sse) / pixels)
    chunk = min(_CHUNK.value, moves)
    run = jax.jit(functools.partial(scene_mh.run, num_moves=chunk, variance=_VARIANCE.value))
    key = jax.random.key(_SEED.value)
    curves, best = [], np.asarray(chains.sse) / pixels
    best_curve = []
    start = time.perf_counter()
    for i in range(-(-moves // chunk)):
        chains, l2 = run(jax.random.fold_in(key, i), chains, targets)
        l2 = np.asarray(l2)
        curves.append(l2)
        best_curve.append(np.minimum.accumulate(np.concatenate([best[None], l2]), axis=0)[1:])
        best = best_curve[-1][-1]
        done = (i + 1) * chunk
        print(f"{done:6d} moves: L2 {l2[-1].mean():.5f} (best {best.mean():.5f}), "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    current = np.concatenate(curves)[:moves]
    best_all = np.concatenate(best_curve)[:moves]
    seconds = time.perf_counter() - start
    at = checkpoints(moves)
    result = {
        "num_scenes": n, "width": width, "moves": moves, "variance": _VARIANCE.value,
        "max_primitives": _MAX.value, "seed": _SEED.value, "blank_mse": blank,
        "render_calls": at,
        "mh_current_mse": [float(current[m - 1].mean()) for m in at],
        "mh_best_mse": [float(best_all[m - 1].mean()) for m in at],
        "renders_per_second": n * moves / seconds, "seconds": round(seconds, 1),
    }
    if agent is not None:
        result["agent_eval"] = {k: v for k, v in agent.items() if k != "num_episodes"}
    print(f"empty floor: {blank:.5f}")
    print("render calls   MH current   MH best")
    for m, c, b in zip(at, result["mh_current_mse"], result["mh_best_mse"], strict=True):
        print(f"{m:12d} {c:12.5f} {b:9.5f}")
    if agent is not None:
        for k, row in result["agent_eval"].items():
            print(f"{k}: {row['mse']:.5f} at {row['render_calls']} render calls")
    print(f"{result['renders_per_second']:.0f} renders/s over {seconds:.0f} s")
    if _OUT.value:
        out = pathlib.Path(_OUT.value)
        plot(result, out)
        print(f"wrote {out}")
    json_path = _JSON.value or (str(pathlib.Path(_OUT.value).with_suffix(".json"))
                                if _OUT.value else None)
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}")


if __name__ == "__main__":
    app.run(main)
