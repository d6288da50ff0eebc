"""What a training run writes besides checkpoints: scalars to `metrics.jsonl` and
TensorBoard, the loop's timing to `timing.jsonl` and TensorBoard, sample grids to PNG
files and TensorBoard. Only the chief process (index 0) writes; on the others every
method does nothing.

Everything goes through `etils.epath`, so a workdir in a bucket (`gs://...`) works like
a local one: tensorboardX's own bucket writers are replaced, for the workdir's scheme,
by one that writes through epath (`EpathEventFiles`).
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
from etils import epath
from tensorboardX import SummaryWriter, record_writer

from spiral_jax.pictures import to_pil

METRICS_FILE = "metrics.jsonl"
# Wall-clock figures other than `minutes` and `frames_per_second` go here, so that every
# other value in metrics.jsonl is a function of the config and seed (a resumed or
# multi-process run logs the same values as an uninterrupted one).
TIMING_FILE = "timing.jsonl"


def minutes_trained(path: epath.Path, step: int) -> float:
    """Training minutes logged up to `step` by earlier invocations (0 for a new run),
    so that a resumed run's `minutes` continue where the checkpoint left off."""
    minutes = 0.0
    if step > 0 and path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", step + 1) <= step:
                minutes = max(minutes, float(record.get("minutes", 0.0)))
    return minutes


class RunLog:
    """Appends one `metrics.jsonl` line per record (with `step`, `frames` and training
    `minutes`, continued across resumes) and mirrors it to TensorBoard."""

    def __init__(self, workdir: epath.Path, start_step: int, frames_per_step: int,
                 is_chief: bool):
        self.workdir = workdir
        self.frames_per_step = frames_per_step
        self.active = is_chief
        self._t_start = time.perf_counter()
        self._minutes_before = 0.0
        self._file: Any = None
        self._timing_file: Any = None
        self._tb: SummaryWriter | None = None
        if is_chief:
            path = workdir / METRICS_FILE
            self._minutes_before = minutes_trained(path, start_step)
            self._file = path.open("a")
            self._timing_file = (workdir / TIMING_FILE).open("a")
            scheme = str(workdir).split("://")[0] if "://" in str(workdir) else None
            if scheme is not None:
                record_writer.register_writer_factory(scheme, EpathEventFiles())
            self._tb = SummaryWriter(str(workdir / "tensorboard"))
            (workdir / "samples").mkdir(exist_ok=True)

    def minutes(self) -> float:
        return self._minutes_before + (time.perf_counter() - self._t_start) / 60.0

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        """One record, flushed so that a kill loses none."""
        if not self.active:
            return
        for k, v in values.items():
            self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if prefix == "train":
            self._tb.add_scalar("train/frames", step * self.frames_per_step, step)
        record = {"step": step, "frames": step * self.frames_per_step,
                  "minutes": self.minutes(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def timing(self, step: int, values: dict[str, float]) -> None:
        """Wall-clock figures: one `timing.jsonl` line, and TensorBoard under `time/`."""
        if not self.active:
            return
        for k, v in values.items():
            self._tb.add_scalar(f"time/{k}", v, step)
        self._timing_file.write(json.dumps({"step": step, "minutes": self.minutes(),
                                            **values}) + "\n")
        self._timing_file.flush()

    def image(self, name: str, grid: np.ndarray, step: int, filename: str) -> None:
        """A uint8 grid [H, W, C] to TensorBoard and to <workdir>/samples/<filename>."""
        if not self.active:
            return
        self._tb.add_image(name, grid, step, dataformats="HWC")
        with (self.workdir / "samples" / filename).open("wb") as f:  # also on gs://
            to_pil(grid).save(f, format="PNG")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for f in (self._file, self._timing_file):
            if f is not None:
                f.close()


class EpathEventFiles:
    """tensorboardX writer factory for paths with a scheme (`gs://`, `s3://`), through
    epath. An object in a bucket cannot be appended to, so each event file is kept in
    memory and rewritten whole on every flush (tensorboardX flushes every two minutes
    and on close); scalars and a few sample grids make small files."""

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> _EpathEventFile:
        return _EpathEventFile(epath.Path(path))


class _EpathEventFile:
    def __init__(self, path: epath.Path):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()
