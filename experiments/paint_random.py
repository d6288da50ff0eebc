r"""Paints random episodes with the JAX environment and saves them as a PNG grid.

    python -m experiments.paint_random --out=random_paintings.png

Actions are drawn like the libmypaint fixtures' (flag = 1 with probability 0.7, every
other part uniform), all episodes stepped at once with `jit(vmap(scan))`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from spiral_jax.envs.libmypaint import LibMyPaint, play
from spiral_jax.image_grid import save_grid

_OUT = flags.DEFINE_string("out", "random_paintings.png", "Where to write the grid.")
_EPISODES = flags.DEFINE_integer("episodes", 16, "Number of episodes.")
_EPISODE_LENGTH = flags.DEFINE_integer("episode_length", 20, "Steps per episode with reset.")
_CANVAS = flags.DEFINE_integer("canvas_width", 64, "Canvas side in pixels.")
_GRID = flags.DEFINE_integer("grid_width", 32, "Action grid side.")
_COLOR = flags.DEFINE_bool("color", True, "Colour strokes (else black ink, one channel).")
_JITTER = flags.DEFINE_bool("jitter", True, "Brush jitter, as libmypaint's dry_brush has.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")


def random_episodes(env: LibMyPaint, key: jax.Array, episodes: int) -> jax.Array:
    """Final canvases [episodes, W, W, C] of random episodes."""

    def episode(key):
        reset_key, action_key = jax.random.split(key)
        steps = env.episode_length - 1
        keys = jax.random.split(action_key, len(env.action_spec()))
        actions = {
            name: jax.random.randint(k, (steps,), 0, n)
            for k, (name, n) in zip(keys, env.action_spec().items(), strict=True)
        }
        actions["flag"] = jax.random.bernoulli(keys[2], 0.7, (steps,)).astype(jnp.int32)

        return play(env, reset_key, actions)[-1]

    return jax.jit(jax.vmap(episode))(jax.random.split(key, episodes))


def main(argv):
    del argv
    env = LibMyPaint(
        episode_length=_EPISODE_LENGTH.value,
        canvas_width=_CANVAS.value,
        grid_width=_GRID.value,
        use_color=_COLOR.value,
        brush_jitter=_JITTER.value,
    )
    start = time.perf_counter()
    canvases = random_episodes(env, jax.random.PRNGKey(_SEED.value), _EPISODES.value)
    canvases.block_until_ready()
    seconds = time.perf_counter() - start
    save_grid(_OUT.value, canvases)
    print(
        f"painted {_EPISODES.value} episodes of {env.episode_length - 1} steps in "
        f"{seconds:.1f} s (compilation included) -> {_OUT.value}"
    )


if __name__ == "__main__":
    app.run(main)
