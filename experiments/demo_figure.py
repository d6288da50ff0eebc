r"""The README's demo picture: the target, canvas.png and program.svg side by side.

    python -m experiments.paint --agent=mnist5k_conditional --target=docs/images/digit.png \
        --out=painted
    python -m experiments.demo_figure --target=docs/images/digit.png --painted=painted \
        --out=docs/images/demo_target_canvas_svg.png
    cp painted/painting.gif docs/images/demo_painting.gif

Each panel is scaled up 4x (nearest neighbour) and tiled by `image_grid.make_grid`, in
grey borders. The SVG is rendered by
resvg (`spiral_jax.program_svg.render`), so the third panel shows what the program
describes, drawn by a renderer independent of the painting engine.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from etils import epath
from PIL import Image

from spiral_jax import image_files, image_grid, program_svg

_TARGET = flags.DEFINE_string("target", None, "The target image given to experiments.paint.")
_PAINTED = flags.DEFINE_string("painted", None, "experiments.paint's --out folder.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")
_SCALE = flags.DEFINE_integer("scale", 4, "Pixels per canvas pixel.")
flags.mark_flags_as_required(["target", "painted", "out"])

_BORDER = 8
_GREY = 128


def main(argv):
    del argv
    painted = epath.Path(_PAINTED.value)
    with (painted / "canvas.png").open("rb") as f:
        canvas = Image.open(f)
        canvas.load()
    width = canvas.size[0]
    # As experiments.paint showed it to the agent.
    target = image_files.read_image(_TARGET.value, image_size=width, channels=1)[..., 0]
    svg = program_svg.render((painted / "program.svg").read_text())
    rendered = np.round(svg.mean(axis=-1) * 255).astype(np.uint8)
    panels = [target, np.asarray(canvas.convert("L"), np.uint8), rendered]
    scale = np.ones((_SCALE.value, _SCALE.value), np.uint8)
    big = np.stack([np.kron(panel, scale) for panel in panels])[..., None] / 255.0
    out = image_grid.make_grid(big, ncols=len(panels), padding=_BORDER, pad_value=_GREY / 255)
    path = epath.Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Image.fromarray(out[..., 0]).convert("RGB").save(f, format="PNG")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
