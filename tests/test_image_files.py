"""spiral_jax.image_files and dataset 'folder': your own images in the canvas convention,
checked pixel for pixel against numpy references; a folder wired through a config into
the Experiment; errors for missing, empty and unreadable input; slow: training on a
folder of 100 PNGs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.configs import small
from spiral_jax import datasets, experiment, image_files, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _save(path: pathlib.Path, array: np.ndarray, mode: str | None = None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


# ------------------------------------------------------------------------------------
# One image.


def test_grey_image_is_padded_square_with_white_and_kept_dark_on_white(tmp_path):
    ink = np.full((8, 4), 255, np.uint8)
    ink[2:6, 1] = 0  # a dark bar
    got = image_files.read_image(_save(tmp_path / "a.png", ink), image_size=8, channels=1)
    want = np.full((8, 8), 255, np.uint8)
    want[:, 2:6] = ink  # centred, white either side
    np.testing.assert_array_equal(got[..., 0], want)
    assert got.shape == (8, 8, 1) and got.dtype == np.uint8


def test_inverted_image_pads_with_its_dark_ground(tmp_path):
    raw = np.zeros((4, 8), np.uint8)  # MNIST-like: white ink on black
    raw[1, 2:5] = 200
    got = image_files.read_image(_save(tmp_path / "m.png", raw), image_size=8, channels=1,
                                 invert=True)
    want = np.full((8, 8), 255, np.uint8)
    want[2:6] = 255 - raw
    np.testing.assert_array_equal(got[..., 0], want)


def test_transparency_is_laid_on_the_ground_and_colour_kept(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)  # fully transparent ...
    rgba[2, 3] = (200, 30, 10, 255)  # ... but one opaque red pixel
    rgba[4, 1] = (0, 0, 0, 128)  # and one half-transparent black one
    path = _save(tmp_path / "t.png", rgba, "RGBA")
    got = image_files.read_image(path, image_size=6, channels=3)
    want = np.full((6, 6, 3), 255, np.uint8)
    want[2, 3] = (200, 30, 10)
    want[4, 1] = 127  # 255 * (1 - 128 / 255), Pillow's rounding
    np.testing.assert_allclose(got, want, atol=1)
    grey = image_files.read_image(path, image_size=6, channels=1)
    luma = round(200 * 0.299 + 30 * 0.587 + 10 * 0.114)  # Pillow's documented RGB -> L
    assert abs(int(grey[2, 3, 0]) - luma) <= 1 and grey[0, 0, 0] == 255


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    raw = np.full((4, 4), 257 * 100, np.uint16)
    raw[0, 0] = 65535
    path = tmp_path / "d.png"
    Image.fromarray(raw).save(path)
    got = image_files.read_image(path, image_size=4, channels=1)[..., 0]
    assert got[0, 0] == 255 and np.all(got.ravel()[1:] == 100)


def test_resizing_is_the_datasets_resizing(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    got = image_files.read_image(_save(tmp_path / "c.png", raw), image_size=16, channels=3)
    want = datasets.to_canvas_convention(raw, image_size=16, invert=False,
                                         centre_crop=False, channels=3)
    np.testing.assert_array_equal(got, want)


def test_unreadable_and_missing_images_fail_in_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png") as err:
        image_files.read_image(tmp_path / "bad.png", image_size=8, channels=1)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"image .*none\.png does not exist"):
        image_files.read_image(tmp_path / "none.png", image_size=8, channels=1)


# ------------------------------------------------------------------------------------
# A folder as a dataset.


def _digit_folder(root: pathlib.Path, n: int = 100, size: tuple[int, int] = (20, 24)
                  ) -> list[tuple[pathlib.Path, np.ndarray]]:
    """n grey PNGs of light strokes on black (MNIST's raw convention), in two subfolders;
    returns (path, pixels) sorted by path."""
    rng = np.random.default_rng(1)
    files = []
    for i in range(n):
        a = np.zeros(size, np.uint8)
        col = rng.integers(2, 20)
        a[rng.integers(2, 10):rng.integers(12, 18), col:col + 3] = 255
        files.append((_save(root / f"class{i % 2}" / f"{i:03d}.png", a), a))
    return sorted(files, key=lambda f: str(f[0]))


def test_folder_dataset_reads_every_image_in_a_fixed_random_order(tmp_path):
    files = _digit_folder(tmp_path / "digits")
    (tmp_path / "digits" / "notes.txt").write_text("not an image")
    (tmp_path / "digits" / ".hidden.png").write_bytes(b"skipped")
    ds = datasets.load("folder", "train", image_size=16, channels=1,
                       data_dir=tmp_path / "digits", invert=True)
    assert ds.images.shape == (100, 16, 16, 1) and ds.num_classes is None
    assert sorted(ds.indices.tolist()) == list(range(100))
    assert ds.indices.tolist() != list(range(100))  # shuffled, so a prefix is random
    for k in range(100):
        raw = files[ds.indices[k]][1]
        padded = np.zeros((24, 24), np.uint8)  # the dark ground, before inversion
        padded[2:22] = raw
        want = datasets.to_canvas_convention(padded, image_size=16, invert=True,
                                             centre_crop=False, channels=1)
        np.testing.assert_array_equal(ds.images[k], want)
    # Inverted: the ground is white, the strokes dark.
    assert np.median(ds.images) == 255 and ds.images.min() < 64
    again = datasets.load("folder", "test", image_size=16, channels=1,
                          data_dir=tmp_path / "digits", invert=True, max_examples=10)
    np.testing.assert_array_equal(again.images, ds.images[:10])  # no split: same images


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    for split, n in (("train", 5), ("test", 3)):
        for i in range(n):
            _save(tmp_path / split / f"{i}.png", np.full((4, 4), 60 * i, np.uint8))
    train_ds = datasets.load("folder", "train", image_size=4, data_dir=tmp_path)
    test_ds = datasets.load("folder", "test", image_size=4, data_dir=tmp_path)
    assert len(train_ds) == 5 and len(test_ds) == 3 and train_ds.image_shape == (4, 4, 1)
    assert sorted(int(x) for x in test_ds.images[:, 0, 0, 0]) == [0, 60, 120]
    _save(tmp_path / "c" / "0.png", np.full((4, 4, 3), [250, 0, 0], np.uint8))
    assert datasets.load("folder", "train", image_size=4, data_dir=tmp_path / "c"
                         ).image_shape == (4, 4, 3)  # colour kept when channels=None


@pytest.mark.parametrize("case", ["missing", "empty", "no test split", "no data_dir",
                                  "unreadable", "invert elsewhere"])
def test_folder_errors_are_one_line_and_name_the_folder(tmp_path, case):
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "split" / "train" / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_text("?")
    kwargs = dict(image_size=8, channels=1)
    error, match, call = {
        "missing": (image_files.ImageFolderError, r"image folder .*nowhere does not exist",
                    lambda: datasets.load("folder", data_dir=tmp_path / "nowhere", **kwargs)),
        "empty": (image_files.ImageFolderError, r"image folder .*empty holds no images.*png",
                  lambda: datasets.load("folder", data_dir=tmp_path / "empty", **kwargs)),
        "no test split": (image_files.ImageFolderError, r"split has .* but no test/",
                          lambda: datasets.load("folder", "test", data_dir=tmp_path / "split",
                                                **kwargs)),
        "no data_dir": (ValueError, r"dataset 'folder' needs data_dir",
                        lambda: datasets.load("folder", **kwargs)),
        "unreadable": (ValueError, r"cannot read image .*broken/x\.png",
                       lambda: datasets.load("folder", data_dir=tmp_path / "broken", **kwargs)),
        "invert elsewhere": (ValueError, r"invert=True is for dataset 'folder' only",
                             lambda: datasets.load("mnist5k", invert=True, **kwargs)),
    }[case]
    with pytest.raises(error, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    if error is image_files.ImageFolderError:
        assert isinstance(err.value, FileNotFoundError)  # the CLIs' one-line errors


def _folder_config(data_dir: pathlib.Path):
    config = small.get_config()
    config.dataset = "folder"
    config.data_dir = str(data_dir)
    config.invert_images = True
    config.max_examples = 0
    return config


def test_a_config_selects_the_folder_for_the_experiment(tmp_path):
    _digit_folder(tmp_path / "digits")
    exp = experiment.build(_folder_config(tmp_path / "digits"))
    want = datasets.load("folder", image_size=16, channels=1, data_dir=tmp_path / "digits",
                         invert=True)
    np.testing.assert_array_equal(np.asarray(exp.data.images), want.images)
    config = _folder_config(tmp_path / "empty_dir")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        experiment.build(config)


def test_command_line_reports_an_empty_folder_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=small",
         "--config.dataset=folder", f"--config.data_dir={tmp_path / 'empty'}",
         f"--workdir={tmp_path / 'run'}"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        cwd=REPO, timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image folder"), out.stderr
    assert "holds no images" in lines[0]


@pytest.mark.slow
def test_trains_on_a_folder_of_100_pngs(tmp_path):
    _digit_folder(tmp_path / "digits")
    config = _folder_config(tmp_path / "digits")
    config.num_train_steps = 2
    config.checkpoint_every = 2
    config.sample_every = 100
    config.disc_learner.updates_per_step = 1
    train.train_and_evaluate(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["d_loss"]) for r in records)
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["dataset"], saved["invert_images"]) == ("folder", True)
