"""SPIRAL++'s complement discriminator: random half-image masks and the pairs D judges.

A conditional discriminator that sees (canvas, target) concatenated on channels can
compare them pixel by pixel, and its score then rewards a pixel-wise copy of the
target more than a plausible painting of it. SPIRAL++ (Mellor et al., 2019,
"Unsupervised Doodling and Painting with Improved SPIRAL", Sec. 3.3) shows D instead
one half of the image beside the *other* half of the target: with a mask m covering
the left, right, top or bottom half (each with probability 1/4),

* a real pair is (m * target, (1 - m) * target): the target's two halves;
* a fake pair is (m * canvas, (1 - m) * target): the painted half beside the target's
  other half.

D must then judge whether the painted half continues the target, which no pixel
comparison can answer. `sample_masks` draws one mask per key (per example, so that a
data-parallel draw does not depend on how the batch is split over devices) and
`pairs` builds the two members; the discriminator still concatenates them on channels
(`spiral_jax.discriminator`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spiral_jax.types import Array, is_int

#: The halves a mask can cover, in the order of the index `sample_masks` draws.
HALVES = ("left", "right", "top", "bottom")


def half_masks(height: int, width: int) -> Array:
    """The masks of `HALVES`, float32 [4, H, W, 1]: 1 on the half, 0 on the other.

    ``height`` and ``width`` must be even, so that every half is exactly half the
    image and a mask and its complement have the same size.
    """
    for name, size in (("height", height), ("width", width)):
        if not is_int(size) or size < 2 or size % 2:
            raise ValueError(f"complement masks need an even image {name} >= 2, got {size!r}")
    rows = jnp.arange(height)[:, None] < height // 2  # [H, 1]: the top half
    cols = jnp.arange(width)[None, :] < width // 2  # [1, W]: the left half
    shape = (height, width)
    halves = {
        "left": jnp.broadcast_to(cols, shape),
        "right": jnp.broadcast_to(~cols, shape),
        "top": jnp.broadcast_to(rows, shape),
        "bottom": jnp.broadcast_to(~rows, shape),
    }
    return jnp.stack([halves[h] for h in HALVES]).astype(jnp.float32)[..., None]


def sample_masks(keys: Array, height: int, width: int) -> Array:
    """One uniformly drawn half-image mask per key, float32 [len(keys), H, W, 1].

    Mask i depends on ``keys[i]`` alone (one draw per key under `jax.vmap`): with
    per-example keys (`sharding.global_keys`) the masks do not depend on how a batch
    is split over devices. Values are 0 and 1; the mask covers ``HALVES[j]`` with
    j ~ U{0, 1, 2, 3}.
    """
    masks = half_masks(height, width)
    index = jax.vmap(lambda k: jax.random.randint(k, (), 0, len(HALVES)))(keys)
    return jnp.take(masks, index, axis=0)


def pairs(images: Array, targets: Array, masks: Array) -> tuple[Array, Array]:
    """(masks * images, (1 - masks) * targets): the two members D judges.

    Args:
      images: what D judges, [..., B, H, W, C] with any leading axes (the targets
        themselves for real pairs, the canvases for fake pairs; e.g. every step's
        canvases [T + 1, B, H, W, C]).
      targets: the targets [..., B, H, W, C]; leading axes broadcast with the masks'.
      masks: one mask per example, [B, H, W, 1] (`sample_masks`); it is broadcast
        over the images' leading axes and channels, so that one mask serves all the
        steps of an episode (per-step rewards then telescope).

    Returns:
      (masked_images, complement_targets): masked_images has ``images.shape`` (e.g.
      [T + 1, B, H, W, C]); complement_targets has ``targets.shape`` (e.g. [B, H, W, C]
      for one target per episode: it is *not* broadcast to the images' leading axes,
      `discriminator.score_canvases` does that). float32 for float32 inputs.
    """
    if getattr(masks, "ndim", None) != 4 or masks.shape[-1] != 1:
        raise ValueError(f"masks must be [B, H, W, 1], got {getattr(masks, 'shape', None)}")
    for name, x in (("images", images), ("targets", targets)):
        if getattr(x, "ndim", 0) < 4 or tuple(x.shape[-4:-1]) != tuple(masks.shape[:3]):
            raise ValueError(
                f"{name} must be [..., B, H, W, C] with the masks' [B, H, W] = "
                f"{tuple(masks.shape[:3])}, got {getattr(x, 'shape', None)}"
            )
    return masks * images, (1.0 - masks) * targets
