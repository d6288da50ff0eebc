"""A program's strokes as SVG: quadratic Bézier paths on a white canvas.

`to_svg(program)` draws each paint step of a `spiral_jax.program.Program` as one SVG
path, `M start Q control end`, in painting order, with round caps and joins, the
stroke's colour, and a width and opacity that stand for the environment's brush
(`brush_cross_section`); moves draw nothing. SVG and the canvas share coordinates:
(x, y) pixels from the top-left corner, pixel (i, j) covering [i, i + 1) x [j, j + 1).

The brush is libmypaint's soft dry brush (`spiral_jax.envs.dry_brush`), not a vector
stroke, so an SVG renderer's picture is close to the canvas, not equal to it: soft
edges of large brushes become hard, pressure blended along a stroke becomes its mean,
and jitter is left out. `render` (resvg, an independent SVG renderer) and `compare`
measure the difference; docs/programs.md reports it, tests/test_program.py bounds it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spiral_jax.envs import dry_brush
from spiral_jax.program import Program, Step

# Where the measuring strokes lie (see `brush_cross_section`): their axes at ten
# sub-pixel offsets, in five directions (small dabs are anti-aliased along x only).
_OFFSETS = np.arange(10) / 10.0
_ANGLES = np.deg2rad([0.0, 22.5, 45.0, 67.5, 90.0])
# Sub-samples per pixel side for a band's pixel coverage (as an SVG renderer's
# anti-aliasing sees it).
_SUBSAMPLES = 4


def _stroke_frames(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, direction and normal [K, 2] of each of the K = angles x offsets
    measuring strokes: through the canvas's centre, shifted by the offset along the
    normal."""
    angle, offset = (g.ravel() for g in np.meshgrid(_ANGLES, _OFFSETS, indexing="ij"))
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    normal = np.stack([-np.sin(angle), np.cos(angle)], axis=-1)
    centre = width / 2 + 0.5 + offset[:, None] * normal
    return centre, direction, normal


@functools.lru_cache(maxsize=8)
def _straight_stroke_fn(width: int, dab_budget: int) -> Any:
    """Darkness [K, width, width] of a canvas `width` wide after one straight stroke of
    the environment's brush (jitter off), for each of the K measuring strokes."""

    def darkness(radius, pressure, length, centre, direction):
        t = jnp.linspace(-0.5, 0.5, dry_brush.STROKES_PER_STEP + 1)[:, None]
        points = centre + length * t * direction
        dabs, _ = dry_brush.stroke_dabs(
            key=jax.random.PRNGKey(0), brush_pos=points[0], points=points[1:],
            pressure_start=pressure, pressure_end=pressure, speed_slow=jnp.zeros(()),
            dab_phase=jnp.zeros(()), base_radius=radius, dab_budget=dab_budget, jitter=False,
        )
        return 1.0 - dry_brush.transmittance(dabs, width)

    return jax.jit(jax.vmap(darkness, in_axes=(None, None, None, 0, 0)))


@functools.lru_cache(maxsize=1024)
def brush_cross_section(radius: float, pressure: float, dab_budget: int) -> tuple[float, float]:
    """(width, opacity) of the uniform band, in pixels, that best stands for a stroke of
    the environment's brush of this radius and pressure.

    An SVG stroke is a band of one opacity; the brush (`spiral_jax.envs.dry_brush`)
    lays overlapping soft dabs whose darkness falls off across the stroke, anti-aliases
    dabs under 3 pixels (along x only, so a thin stroke's width depends on its
    direction) and widens slow strokes a little. So the band is measured, not assumed:
    straight strokes of the brush itself (`stroke_dabs` and `transmittance`, the
    functions the environment paints with), 4 radii + 16 pixels long, in five
    directions from 0 to 90 degrees and with their axes at ten sub-pixel offsets; the
    band returned is the one whose coverage of the pixels across the strokes' middles
    (sub-sampled, as an SVG renderer anti-aliases) is nearest in L1 to their darkness.
    Cached; a few milliseconds per (radius, pressure) after one compilation per
    measuring canvas size.
    """
    length = 4.0 * radius + 16.0
    width = 16 * math.ceil((3.0 * radius + 8.0) / 16)
    centre, direction, normal = _stroke_frames(width)
    dark = np.asarray(_straight_stroke_fn(width, dab_budget)(
        np.float32(radius), np.float32(pressure), np.float32(length),
        jnp.asarray(centre, jnp.float32), jnp.asarray(direction, jnp.float32)), np.float64)
    # Pixels across each stroke's middle: their centres within half a pixel of it.
    ys, xs = np.mgrid[0:width, 0:width] + 0.5
    rel = np.stack([xs, ys], axis=-1)[None] - centre[:, None, None]  # [K, W, W, 2]
    along = np.abs(np.einsum("kijc,kc->kij", rel, direction))
    k, i, j = np.nonzero(along <= 0.5)
    sub = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5
    sx, sy = (g.ravel() for g in np.meshgrid(sub, sub))
    # |distance from the axis| of each sub-sample of each pixel: [N, S^2].
    perp = np.abs(np.einsum("nc,nc->n", rel[k, i, j], normal[k])[:, None]
                  + sx[None] * normal[k, 0:1] + sy[None] * normal[k, 1:2])
    target = dark[k, i, j]
    half_widths = radius * np.arange(1, 61) / 40.0  # 0.025 r .. 1.5 r
    opacities = np.linspace(0.01, 1.0, 100)
    best = (math.inf, 0.0, 0.0)
    for h in half_widths:
        cover = (perp <= h).mean(axis=1)  # [N]
        err = np.abs(opacities[:, None] * cover[None] - target[None]).sum(axis=1)
        o = int(np.argmin(err))
        best = min(best, (float(err[o]), 2.0 * float(h), float(opacities[o])))
    return best[1], best[2]


def stroke_style(step: Step, dab_budget: int) -> tuple[float, float]:
    """(stroke-width, stroke-opacity) of a paint step's SVG path: `brush_cross_section`
    at its radius and mean pressure (the brush blends pressure along the stroke)."""
    pressure = round(0.5 * (step.pressure_start + step.pressure), 4)
    return brush_cross_section(float(step.radius), pressure, int(dab_budget))


def _hex(color: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in color)


def _num(x: float) -> str:
    return f"{x:.6g}"


def to_svg(program: Program) -> str:
    """The program's strokes as an SVG document of the canvas's size: a white background,
    then one quadratic Bézier path per paint step (`M start Q control end`) in painting
    order, with round caps, its colour, and width and opacity from `stroke_style`.
    Moves draw nothing."""
    w = _num(program.canvas_width)
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{w}" '
        f'viewBox="0 0 {w} {w}">',
        f'<rect x="0" y="0" width="{w}" height="{w}" fill="#ffffff"/>',
    ]
    for t, s in enumerate(program.steps):
        if not s.paint:
            continue
        width, opacity = stroke_style(s, program.settings["dab_budget"])
        d = "M {} {} Q {} {} {} {}".format(*map(_num, (*s.start, *s.control, *s.end)))
        lines.append(
            f'<path id="step-{t}" d="{d}" fill="none" stroke="{_hex(s.color)}" '
            f'stroke-width="{_num(width)}" stroke-opacity="{_num(opacity)}" '
            'stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------
# Checking an SVG against the canvas.


def render(svg: str) -> np.ndarray:
    """An SVG document rendered by resvg (an SVG renderer independent of this code, in
    requirements.txt), as float32 RGB [H, W, 3] in [0, 1] at the document's size."""
    import io

    from PIL import Image

    try:
        import resvg_py  # here: only checks and figures need a renderer
    except ImportError as e:
        raise ImportError("program_svg.render needs resvg-py: pip install resvg-py") from e

    png = resvg_py.svg_to_bytes(svg_string=svg)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0


def compare(rendered: np.ndarray, canvas: np.ndarray) -> dict[str, float]:
    """How far an SVG's rendering [W, W, 3] is from the canvas [W, W, C]: `mae`, the
    mean absolute error of pixels in [0, 1] (a one-channel canvas is compared with the
    rendering's grey), and `iou`, the intersection over union of their inked pixels
    (darkest channel under 0.5; 1 when neither has any)."""
    rendered = np.asarray(rendered, np.float32)
    canvas = np.asarray(canvas, np.float32)
    if canvas.shape[-1] == 1:
        rendered = rendered.mean(axis=-1, keepdims=True)
    if rendered.shape != canvas.shape:
        raise ValueError(f"rendering {rendered.shape} and canvas {canvas.shape} differ")
    a, b = rendered.min(axis=-1) < 0.5, canvas.min(axis=-1) < 0.5
    union = int(np.sum(a | b))
    return {"mae": float(np.mean(np.abs(rendered - canvas))),
            "iou": float(np.sum(a & b)) / union if union else 1.0}
