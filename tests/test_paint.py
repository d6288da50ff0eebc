"""spiral_jax.paint, spiral_jax.pretrained and `experiments.paint`: freshly initialised
small runs written in a tmp dir, painted into canvas.png, painting.gif, program.json and
program.svg, and each file checked against the others; bad input fails in one line
before anything compiles."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.configs import scenes_cpu, small
from spiral_jax import (
    checkpoints,
    datasets,
    experiment,
    image_files,
    paint,
    pretrained,
    program_svg,
)
from spiral_jax import program as program_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP = 3


def _write_run(workdir: pathlib.Path, conditional: bool) -> None:
    """A `small` run's config.json and a checkpoint of freshly initialised parameters,
    as spiral_jax.train writes them (no training: painting only needs the files)."""
    config = small.get_config()
    config.conditional = conditional
    if conditional:
        config.reward.kind = "l2"
    blank = datasets.ImageDataset("blank", "train", np.full((8, 16, 16, 1), 255, np.uint8),
                                  np.full(8, -1, np.int32), np.arange(8), None)
    exp = experiment.build(config, dataset=blank)
    state = exp.init_state(jax.random.PRNGKey(1)).replace(step=np.int32(STEP))
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    mngr = checkpoints.manager(workdir, keep=2)
    checkpoints.save(mngr, STEP, state)
    mngr.wait_until_finished()
    mngr.close()


class Runs:
    """The conditional run, written once; the unconditional one when first asked for."""

    def __init__(self, root: pathlib.Path):
        self.root = root

    def __getitem__(self, kind: str) -> pathlib.Path:
        path = self.root / kind
        if not path.exists():
            _write_run(path, conditional=kind == "cond")
        return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> pathlib.Path:
    """A colour drawing on a transparent sheet, not square, not the canvas's size."""
    rgba = np.zeros((30, 50, 4), np.uint8)
    rgba[5:25, 10:14] = (180, 20, 20, 255)
    rgba[20:24, 10:40] = (20, 20, 180, 255)
    path = tmp_path_factory.mktemp("target") / "drawing.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _levels(canvas: np.ndarray) -> np.ndarray:
    """A canvas's 8-bit levels (the environment observes k / 255)."""
    return np.round(canvas * 255).astype(np.uint8)


def _check_files(out: pathlib.Path, painting: paint.Painting, tag: str = "") -> Image.Image:
    """The four files of one painting agree with it and with each other."""
    levels = np.asarray(Image.open(out / f"canvas{tag}.png"))[..., None]
    np.testing.assert_array_equal(levels, _levels(painting.canvas))
    canvas = levels.astype(np.float32) / 255
    program = program_lib.load(out / f"program{tag}.json")
    assert program == painting.program
    # The program replays to canvas.png exactly (the small config's brush has no jitter).
    np.testing.assert_array_equal(_levels(program_lib.replay(program)), levels)
    svg = (out / f"program{tag}.svg").read_text()
    assert svg.count("<path") == len(program.strokes)
    assert program_svg.compare(program_svg.render(svg), canvas)["mae"] < 0.1
    gif = Image.open(out / f"painting{tag}.gif")
    assert gif.n_frames == program.settings["episode_length"]  # blank, then each step
    gif.seek(gif.n_frames - 1)
    return gif


@pytest.mark.slow
def test_paints_a_target_into_four_files(runs, target, tmp_path):
    workdir, step, folder = paint.resolve_source(None, str(runs["cond"]))
    assert (workdir, step, folder) == (runs["cond"], None, "checkpoints")
    config, targets = paint.prepare(workdir, str(target), num=2)
    want = image_files.read_image(target, image_size=16, channels=1)
    np.testing.assert_array_equal(targets, np.stack([want, want]) / np.float32(255))
    run = paint.load(workdir, step, folder)
    assert run.step == STEP
    paintings = paint.paint(run, targets, 2, seed=0, greedy=False,
                            info={"target": str(target)})
    written = paint.write(tmp_path, paintings)
    assert sorted(p.name for p in written) == sorted(
        f"{n}_{i:02d}.{e}" for i in range(2)
        for n, e in (("canvas", "png"), ("painting", "gif"), ("program", "json"),
                     ("program", "svg")))
    for i, p in enumerate(paintings):
        gif = _check_files(tmp_path, p, f"_{i:02d}")
        assert gif.size[1] > 2 * gif.size[0] - 20  # the target above the painting
        assert p.program.info == {"target": str(target), "step": STEP, "seed": 0,
                                  "greedy": False, "episode": i}
    assert sum(len(p.program.strokes) for p in paintings) > 0


@pytest.mark.slow
def test_paints_unconditional_samples(runs, tmp_path):
    workdir, step, folder = paint.resolve_source(None, str(runs["uncond"] / "checkpoints"))
    _, targets = paint.prepare(workdir, None, num=1)
    assert targets is None
    paintings = paint.paint(paint.load(workdir, step, folder), None, 1, seed=3, greedy=True)
    paint.write(tmp_path, paintings)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "canvas.png", "painting.gif", "program.json", "program.svg"]
    _check_files(tmp_path, paintings[0])
    assert json.loads((tmp_path / "program.json").read_text())["info"]["greedy"] is True


def _config_only_run(root: pathlib.Path, conditional: bool) -> pathlib.Path:
    """A workdir with a config.json and an (empty) checkpoint folder: all that the
    checks before loading read."""
    config = small.get_config()
    config.conditional = conditional
    (root / "checkpoints" / str(STEP)).mkdir(parents=True)
    (root / "config.json").write_text(config.to_json_best_effort())
    return root


@pytest.mark.parametrize("case", ["both", "neither", "unknown agent", "missing agent",
                                  "no such dir", "not a checkpoint", "no checkpoints",
                                  "no target", "target for unconditional", "bad num",
                                  "unreadable target", "missing target", "scenes run"])
def test_bad_input_fails_in_one_line(target, tmp_path, case):
    (tmp_path / "bad.png").write_text("?")
    cond = _config_only_run(tmp_path / "cond", conditional=True)
    uncond = _config_only_run(tmp_path / "uncond", conditional=False)
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.json").write_text((cond / "config.json").read_text())
    scenes_run = tmp_path / "scenes_run"
    (scenes_run / "checkpoints" / str(STEP)).mkdir(parents=True)
    (scenes_run / "config.json").write_text(scenes_cpu.get_config().to_json_best_effort())
    error, match, call = {
        "both": (ValueError, "exactly one of --agent",
                 lambda: paint.resolve_source("x", str(cond))),
        "neither": (ValueError, "exactly one", lambda: paint.resolve_source(None, None)),
        "unknown agent": (ValueError, r"unknown pretrained agent 'x'; available: mnist5k",
                          lambda: paint.resolve_source("x", None)),
        "missing agent": (FileNotFoundError, r"pretrained agent 'mnist5k' is not in this",
                          lambda: pretrained.folder("mnist5k", tmp_path)),
        "no such dir": (FileNotFoundError, r"--checkpoint=.*nowhere does not exist",
                        lambda: paint.resolve_source(None, str(tmp_path / "nowhere"))),
        "not a checkpoint": (ValueError, r"must be <workdir>/checkpoints/<step>",
                             lambda: paint.resolve_source(None, str(tmp_path))),
        "no checkpoints": (FileNotFoundError, r"no checkpoints in .*empty_run/checkpoints",
                           lambda: paint.resolve_source(None, str(tmp_path / "empty_run"))),
        "no target": (ValueError, r"conditional: give the image to paint, --target",
                      lambda: paint.prepare(cond, None, 1)),
        "target for unconditional": (ValueError, r"unconditional and takes no --target",
                                     lambda: paint.prepare(uncond, str(target), 1)),
        "bad num": (ValueError, r"--num=0 must be a positive integer",
                    lambda: paint.prepare(cond, None, 0)),
        "unreadable target": (ValueError, r"cannot read image .*bad\.png",
                              lambda: paint.prepare(cond, str(tmp_path / "bad.png"), 1)),
        "missing target": (FileNotFoundError, r"image .*gone\.png does not exist",
                           lambda: paint.prepare(cond, str(tmp_path / "gone.png"), 1)),
        "scenes run": (ValueError, r"scenes_run is a scenes run: experiments.paint writes "
                       "libmypaint programs", lambda: paint.prepare(scenes_run, str(target), 1)),
    }[case]
    with pytest.raises(error, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    if case in ("no target", "bad num"):  # a sound source resolves
        assert paint.resolve_source(None, str(cond)) == (cond, None, "checkpoints")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.paint", *args],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def test_command_line_rejects_bad_input_with_exit_2(tmp_path):
    cond = _config_only_run(tmp_path / "cond", conditional=True)
    out = _run(f"--checkpoint={cond}", f"--target={tmp_path / 'none.png'}",
               f"--out={tmp_path / 'out'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: image {tmp_path / 'none.png'} does not exist"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_command_line_paints_a_target(runs, target, tmp_path):
    out = _run(f"--checkpoint={runs['cond']}/checkpoints/{STEP}", f"--target={target}",
               f"--out={tmp_path}", "--nogreedy")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"step {STEP}" in out.stdout and "wrote 4 files" in out.stdout
    program = program_lib.load(tmp_path / "program.json")
    levels = np.asarray(Image.open(tmp_path / "canvas.png"))[..., None]
    np.testing.assert_array_equal(_levels(program_lib.replay(program)), levels)
    canvas = levels.astype(np.float32) / 255
    assert program.info["greedy"] is False and program.info["target"] == str(target)
    svg = program_svg.render((tmp_path / "program.svg").read_text())
    assert program_svg.compare(svg, canvas)["mae"] < 0.1

    # The README's demo picture from these files: target, canvas, SVG, each 4x.
    demo = subprocess.run(
        [sys.executable, "-m", "experiments.demo_figure", f"--target={target}",
         f"--painted={tmp_path}", f"--out={tmp_path / 'demo.png'}"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, cwd=REPO,
        timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    picture = np.asarray(Image.open(tmp_path / "demo.png").convert("L"))
    w = canvas.shape[0]
    side = 4 * w
    assert picture.shape == (side + 16, 3 * (side + 8) + 8)
    panels = [picture[8 : 8 + side, 8 + i * (side + 8) : 8 + i * (side + 8) + side]
              for i in range(3)]
    np.testing.assert_array_equal(panels[1][::4, ::4], levels[..., 0])
    np.testing.assert_array_equal(panels[2][::4, ::4],
                                  np.round(svg.mean(axis=-1) * 255).astype(np.uint8))
    # The target as the agent was shown it (ink dark on white, whatever the file's).
    shown = image_files.read_image(target, image_size=w, channels=1)[..., 0]
    np.testing.assert_array_equal(panels[0][::4, ::4], shown)
    assert np.all(picture[:8] == 128) and np.all(picture[:, :8] == 128)
