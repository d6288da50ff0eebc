"""Blocked Metropolis-Hastings inverse graphics on 3D scenes: SPIRAL's baseline.

Ganin et al. 2018 (§4.6) compare their scene agent with a Metropolis-Hastings search
for the scene that explains a target image: a Gaussian likelihood with diagonal
variance 0.25 over the pixels, up to 20 primitives, and moves that resample one
object's attribute block at a time. Each move renders once, so the search's cost is
counted in render calls, the agent's in its actions (one render each).

The state is a `scene_description.Scene` with `max_objects` slots. The prior: each
slot is present with probability 1/2, and a present object's type, cell, size and
colour are uniform over the action grid (the agent's choices). A move picks a slot
uniformly; then

* an empty slot: *birth*, a new object with every attribute drawn from the prior;
* an occupied one: one of five blocks, uniformly: its type, its cell, its size, its
  colour (the three channels together), each redrawn from the prior, or *death*
  (the slot is emptied).

Redrawing a block from its prior makes prior and proposal cancel, so those moves are
accepted with probability min(1, L'/L). Birth and death are each other's reverse:
birth is proposed with probability (1/N) p(attributes), and undone by death with
(1/N)(1/5); with the prior's p(attributes) this leaves a factor 1/5 on birth and 5 on
death (the Hastings correction). L is exp(-|render(scene) - target|^2 / (2 * 0.25)),
the render rounded to 8 bits as the environment's canvas.

Everything is pure JAX: `run` scans the moves and vmaps the chains, one render per
chain per move.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from spiral_jax.envs import base
from spiral_jax.envs import scene_description as sd
from spiral_jax.envs.scene_description import Scene
from spiral_jax.envs.scene_render import render

VARIANCE = 0.25
"""The paper's likelihood: Gaussian, diagonal variance 0.25."""
MAX_PRIMITIVES = 20
BLOCKS = ("shape", "position", "size", "color", "death")
_LOG_BLOCKS = math.log(len(BLOCKS))


@struct.dataclass
class Chain:
    """One chain: its scene, the scene's canvas, and that canvas's squared error
    to the target (summed over pixels and channels)."""

    scene: Scene
    canvas: jax.Array  # float32 [W, W, 3], 8-bit levels
    sse: jax.Array  # float32 []


def observe(scene: Scene, width: int) -> jax.Array:
    """The scene's canvas as the environment shows it (rendered, rounded to 8 bits)."""
    return base.observe(render(scene, width))


def init(target: jax.Array, max_objects: int = MAX_PRIMITIVES) -> Chain:
    """A chain at the empty scene (the floor), where the agent starts too."""
    scene = sd.empty_scene(max_objects)
    canvas = observe(scene, target.shape[0])
    return Chain(scene, canvas, jnp.sum(jnp.square(canvas - target)))


def propose(key: jax.Array, scene: Scene) -> tuple[Scene, jax.Array]:
    """A blocked move (module docstring): the proposed scene and the log Hastings
    factor log[p(x') q(x | x') / (p(x) q(x' | x))]."""
    k_slot, k_block, k_shape, k_pos, k_size, k_color = jax.random.split(key, 6)
    n = scene.active.shape[-1]
    slot = jax.random.randint(k_slot, (), 0, n)
    block = jax.random.randint(k_block, (), 0, len(BLOCKS))
    shape = jax.random.randint(k_shape, (), 0, len(sd.SHAPES))
    position = jax.random.randint(k_pos, (), 0, sd.GRID_WIDTH**2)
    size = jax.random.randint(k_size, (), 0, len(sd.SIZE_VALUES))
    color = jax.random.randint(k_color, (3,), 0, len(sd.COLOR_LEVELS))
    birth = ~scene.active[slot]
    at = jnp.arange(n) == slot

    def redraw(old: jax.Array, new: jax.Array, name: str) -> jax.Array:
        change = at & (birth | (block == BLOCKS.index(name)))
        if old.ndim == 2:
            change = change[:, None]
        return jnp.where(change, new, old)

    death = ~birth & (block == BLOCKS.index("death"))
    proposed = Scene(
        shape=redraw(scene.shape, shape, "shape"),
        position=redraw(scene.position, position, "position"),
        size=redraw(scene.size, size, "size"),
        color=redraw(scene.color, color, "color"),
        active=jnp.where(at, birth | (scene.active & ~death), scene.active),
    )
    log_factor = jnp.where(birth, -_LOG_BLOCKS, jnp.where(death, _LOG_BLOCKS, 0.0))
    return proposed, log_factor


def step(key: jax.Array, chain: Chain, target: jax.Array,
         variance: float = VARIANCE) -> Chain:
    """One MH move of one chain (one render)."""
    k_move, k_accept = jax.random.split(key)
    scene, log_factor = propose(k_move, chain.scene)
    canvas = observe(scene, target.shape[0])
    sse = jnp.sum(jnp.square(canvas - target))
    log_ratio = (chain.sse - sse) / (2.0 * variance) + log_factor
    accept = jnp.log(jax.random.uniform(k_accept)) < log_ratio
    new = Chain(scene, canvas, sse)
    return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, chain)


def run(key: jax.Array, chains: Chain, targets: jax.Array, num_moves: int,
        variance: float = VARIANCE) -> tuple[Chain, jax.Array]:
    """`num_moves` moves of every chain (batched over the leading axis of `chains`
    and `targets`); returns the chains and the mean squared error per pixel of each
    chain after each move, [num_moves, B]. Pure; jit it (num_moves static)."""
    pixels = math.prod(targets.shape[1:])
    batch = targets.shape[0]

    def body(c: Chain, k: jax.Array) -> tuple[Chain, jax.Array]:
        keys = jax.random.split(k, batch)
        c = jax.vmap(step, in_axes=(0, 0, 0, None))(keys, c, targets, variance)
        return c, c.sse / pixels

    return jax.lax.scan(body, chains, jax.random.split(key, num_moves))
