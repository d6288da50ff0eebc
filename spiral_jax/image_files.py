"""Image files in the canvas convention: a painting target, or a folder to train on.

The canvas convention (`spiral_jax.datasets`): uint8 [S, S, C], 255 = white ground, ink
dark, at the canvas size. A user's image may be any size, colour or grey, 8 or 16 bit,
with or without transparency; `read_image` brings it there:

1. transparency is laid over the ground (white; black when `invert`, since there the
   ground is dark before inversion), so a drawing on a transparent sheet keeps its ink;
2. the image is padded, centred, to a square of the ground colour (not cropped: a
   digit or a character near the edge keeps all its strokes);
3. `datasets.to_canvas_convention` converts it to grey or RGB, resizes it (Pillow's
   antialiased bilinear, as for every other dataset) and inverts it if asked (for
   light ink on a dark ground, e.g. MNIST's raw digits).

`load_folder` reads a folder of such images as a dataset split. TFDS's
`tfds.folder_dataset.ImageFolder` would be the maintained reader, but in
tensorflow-datasets 4.9.10 it lists files with `tf.io.gfile` and returns `tf.data`
datasets, so it needs TensorFlow, which spiral-jax does not install; Pillow over the
sorted file list does the same job here in a few lines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from spiral_jax.datasets import to_canvas_convention

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""File endings (any case) that `list_images` reads."""

FOLDER_SPLIT_SEED = 0
"""Seed of the fixed order in which a folder's images are kept (so that `max_examples`
keeps a random subset, as for the other datasets)."""


class ImageFolderError(FileNotFoundError):
    """An image folder is missing, or holds no images (a FileNotFoundError, like TFDS's
    `DatasetNotPreparedError`, so the command lines report it in one line)."""


def _grey_or_colour(image: Image.Image) -> np.ndarray:
    """uint8 [h, w] for an opaque PIL image holding only greys, else [h, w, 3]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale, do not clip
        a = np.asarray(image, np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or a.max() > 255 else 1.0
        return np.clip(np.round(a / scale), 0, 255).astype(np.uint8)
    if image.mode == "F":
        a = np.asarray(image, np.float64)
        a = a * 255.0 if a.max() <= 1.0 else a
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), np.uint8)
    rgb = np.asarray(image.convert("RGB"), np.uint8)
    grey = np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])
    return rgb[..., 0].copy() if grey else rgb


def _opaque(image: Image.Image, ground: int) -> Image.Image:
    """`image` with any transparency laid over a ground of grey level `ground`."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        ground_image = Image.new("RGBA", rgba.size, (ground, ground, ground, 255))
        flat = Image.alpha_composite(ground_image, rgba).convert("RGB")
        return flat.convert("L") if image.mode in ("LA", "La") else flat
    return image


def _pad_square(image: np.ndarray, ground: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    out = np.full((side, side) + image.shape[2:], ground, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def decode(path: str | os.PathLike[str]) -> Image.Image:
    """The image in `path`, decoded; FileNotFoundError if there is no such file,
    ValueError (one line, naming the file) if Pillow cannot read it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read image {path}: {reason}") from e
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # an animated GIF or WebP: its first frame
    return image


def to_canvas(image: Image.Image, *, image_size: int, channels: int,
              invert: bool = False) -> np.ndarray:
    """A decoded image -> uint8 [image_size, image_size, channels], ink dark on white
    (see the module docstring for the steps)."""
    ground = 0 if invert else 255
    pixels = _pad_square(_grey_or_colour(_opaque(image, ground)), ground)
    return to_canvas_convention(pixels, image_size=image_size, invert=invert,
                                centre_crop=False, channels=channels)


def read_image(path: str | os.PathLike[str], *, image_size: int, channels: int,
               invert: bool = False) -> np.ndarray:
    """The image file `path` in the canvas convention: uint8 [S, S, channels]."""
    return to_canvas(decode(path), image_size=image_size, channels=channels, invert=invert)


def is_colour(image: Image.Image) -> bool:
    """Whether an image holds colour (not only greys)."""
    return _grey_or_colour(_opaque(image, 255)).ndim == 3


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under `folder` (searched recursively; hidden files and folders
    skipped), sorted by their path below it."""
    root = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_folder(folder: str | os.PathLike[str], split: str) -> Path:
    """Where a split's images are: `folder/<split>/` if `folder` has `train/` or `test/`
    subfolders, else `folder` itself for every split (a plain folder of images has no
    held-out part: evaluation then measures on training images)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ImageFolderError(
            f"image folder {root} does not exist (dataset 'folder' reads the PNG/JPEG "
            "images in config.data_dir)"
        )
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not (root / split).is_dir():
            raise ImageFolderError(
                f"image folder {root} has train/ or test/ subfolders but no {split}/"
            )
        return root / split
    return root


def load_folder(folder: str | os.PathLike[str], split: str, *, image_size: int,
                channels: int | None, invert: bool, max_examples: int | None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A folder's split as (uint8 images [N, S, S, C], labels -1 [N], indices [N]).

    Images are kept in a fixed random order (seed `FOLDER_SPLIT_SEED`), so the first
    `max_examples` are a random subset; `indices` are their positions in the sorted
    file list. `channels` None: 3 if the first image holds colour, else 1.
    """
    where = split_folder(folder, split)
    files = list_images(where)
    if not files:
        raise ImageFolderError(
            f"image folder {where} holds no images (files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    order = np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(files))
    if max_examples is not None:
        order = order[:max_examples]
    if channels is None:
        channels = 3 if is_colour(decode(files[order[0]])) else 1
    images = np.empty((len(order), image_size, image_size, channels), np.uint8)
    for n, i in enumerate(order):
        images[n] = read_image(files[i], image_size=image_size, channels=channels,
                               invert=invert)
    return images, np.full(len(order), -1, np.int32), order.astype(np.int64)
