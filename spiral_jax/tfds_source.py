"""Reading prepared TFDS datasets through ``tfds.data_source``, with no TensorFlow or network.

``tfds.data_source`` reads the array_record format by random access and needs no
TensorFlow; TFDS decodes the stored PNG/JPEG bytes with Pillow when OpenCV is absent.
Nothing here downloads: ``find_prepared`` checks, with plain file-system calls, that a
dataset is prepared under ``data_dir`` and otherwise raises ``DatasetNotPreparedError``
within a second, saying how to prepare it (``tfds build NAME --file_format=array_record``
on a machine with TensorFlow and network, or ``data_dir`` pointing at prepared data).
Only then does ``data_source`` open it, with downloading turned off.

This module holds ``TFDS_SPECS`` (each TFDS dataset's splits and how its stored images map
onto the canvas convention), ``resolve_data_dir``, ``find_prepared``, ``data_source`` and
``DatasetNotPreparedError``. ``spiral_jax.datasets.load`` calls them, then preprocesses
the examples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared (in array_record format) under ``data_dir``."""


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
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


TFDS_SPECS: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec(
        "mnist", ("train", "test"), channels=1, invert=True, centre_crop=False,
        label_key="label", num_classes=10,
    ),
    "omniglot": TfdsSpec(
        "omniglot", ("train", "test", "small1", "small2"), channels=1, invert=False,
        centre_crop=False, label_key="label", num_classes=1623, binary_png=True,
    ),
    "celeb_a": TfdsSpec(
        "celeb_a", ("train", "validation", "test"), channels=3, invert=False,
        centre_crop=True, label_key=None, num_classes=None,
    ),
}
"""The TFDS datasets ``spiral_jax.datasets.load`` accepts, keyed by its dataset name."""


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


def data_source(spec: TfdsSpec, split: str, data_dir: Path, version: str) -> Any:
    """Opens ``spec``'s ``split`` at ``version`` (from ``find_prepared``) for random access.

    Returns TFDS's data source: ``len()`` and ``source[i]``, a dict of decoded numpy
    features.
    """
    import tensorflow_datasets as tfds

    # download=False: find_prepared checked the files; never let TFDS reach for the network.
    return tfds.data_source(
        f"{spec.tfds_name}:{version}", split=split, data_dir=os.fspath(data_dir),
        download=False,
    )
