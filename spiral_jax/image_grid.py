"""Tile a batch of images into one picture (for canvases, real data and PNG files)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image


def check_image_batch(images: Any, square: bool = False) -> np.ndarray:
    """A batch of float images [N, H, W, C] (C = 1 or 3, finite, N >= 1) as numpy;
    ValueError naming what is wrong. `square` also requires H == W."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or (square and x.shape[1] != x.shape[2]):
        want = "[N, W, W, C] (square)" if square else "[N, H, W, C]"
        raise ValueError(f"images shape {x.shape} must be {want} with C in (1, 3)")
    if x.shape[0] < 1:
        raise ValueError("images is empty (N = 0)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images dtype {x.dtype} must be floating (values in [0, 1])")
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or inf")
    return x


def make_grid(
    images: Any,
    *,
    ncols: int | None = None,
    padding: int = 2,
    pad_value: float = 0.5,
) -> np.ndarray:
    """Tiles float images [N, H, W, C] in [0, 1] row by row into uint8 [H', W', C].

    Args:
      images: float array-like (numpy or jax) [N, H, W, C], C = 1 or 3; values outside
        [0, 1] are clipped.
      ncols: images per row; default ceil(sqrt(N)).
      padding: pixels between and around the images.
      pad_value: grey level of the padding; mid-grey keeps white grounds apart.

    Returns:
      uint8 [rows * (H + padding) + padding, ncols * (W + padding) + padding, C];
      pixel value round(255 * x). Cells past N stay at ``pad_value``.
    """
    x = check_image_batch(images)
    n, h, w, c = x.shape
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols={ncols!r} must be a positive int")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding={padding!r} must be a non-negative int")
    if not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"pad_value={pad_value!r} must be in [0, 1]")
    nrows = math.ceil(n / ncols)
    tiles = np.rint(np.clip(x.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    grid = np.full(
        (nrows * (h + padding) + padding, ncols * (w + padding) + padding, c),
        np.uint8(round(pad_value * 255)),
        dtype=np.uint8,
    )
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = tiles[i]
    return grid


def save_grid(path: str | os.PathLike[str], images: Any, **kwargs: Any) -> np.ndarray:
    """Writes ``make_grid(images, **kwargs)`` as an image file (PNG by extension) and
    returns the grid. Grayscale grids are written as 8-bit gray, colour as RGB."""
    grid = make_grid(images, **kwargs)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(os.fspath(path))
    return grid
