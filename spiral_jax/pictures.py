"""Pictures of painting: grids of final canvases (with their targets) and GIFs of
episodes painted stroke by stroke."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from spiral_jax.image_grid import make_grid


def to_pil(grid: np.ndarray) -> Image.Image:
    """A uint8 grid [H, W, C] as a PIL image: 8-bit grey for C = 1, else RGB."""
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def save_png(path: str | os.PathLike[str], grid: np.ndarray) -> None:
    """Writes a uint8 grid [H, W, C] (from `make_grid` or `sample_grid`) as a PNG."""
    to_pil(grid).save(os.fspath(path), format="PNG")


def sample_grid(canvases: np.ndarray, targets: np.ndarray | None, ncols: int = 8) -> np.ndarray:
    """uint8 grid of paintings; with targets, (target, painting) pairs side by side
    (`ncols` rounded down to even, so a pair never wraps)."""
    if targets is None:
        return make_grid(canvases, ncols=ncols)
    pairs = np.stack([targets, canvases], axis=1).reshape((-1,) + canvases.shape[1:])
    return make_grid(pairs, ncols=2 * (ncols // 2))


def gif_frames(frames: np.ndarray, targets: np.ndarray | None = None,
               min_side: int = 96) -> list[Image.Image]:
    """One picture per step from canvases [T + 1, k, H, W, C]: the k episodes side by
    side (targets in a row above, if given), enlarged (nearest) to at least `min_side`
    pixels a canvas, with a progress bar under them (which also keeps consecutive
    frames distinct, so GIF writers do not merge steps that changed nothing)."""
    num, k = frames.shape[0], frames.shape[1]
    scale = max(1, -(-min_side // frames.shape[2]))
    pictures = []
    for t in range(num):
        tiles = frames[t] if targets is None else np.concatenate([targets[:k], frames[t]])
        grid = make_grid(tiles, ncols=k)
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
        bar = np.full((6, grid.shape[1], grid.shape[2]), 255, np.uint8)
        bar[1:5, : round(grid.shape[1] * t / max(num - 1, 1))] = 0
        pictures.append(to_pil(np.concatenate([grid, bar])))
    return pictures


def save_gif(path: str | os.PathLike[str], pictures: list[Image.Image], ms_per_step: int = 250,
             ms_at_end: int = 1500) -> None:
    """Writes `pictures` as a looping GIF, lingering on the last (the finished painting)."""
    if not pictures:
        raise ValueError("pictures is empty: a GIF needs at least one frame")
    durations = [ms_per_step] * (len(pictures) - 1) + [ms_at_end]
    pictures[0].save(
        os.fspath(path), save_all=True, append_images=pictures[1:], duration=durations, loop=0
    )
