"""The real libmypaint through ctypes, with SPIRAL's environment semantics.

This is the oracle for the pure-JAX renderer (`spiral_jax.envs.libmypaint`), the
renderer of the fixtures in `tests/fixtures` (`experiments.make_libmypaint_episodes`)
and the baseline of the speed benchmark (`experiments.bench_env`). It lives outside the
installed package, as nothing in the training path needs it. It drives Debian's
`libmypaint-1.5-1` (libmypaint 1.6) with the `classic/dry_brush` brush of
`mypaint-brushes`, the brush SPIRAL (Ganin et al., ICML 2018, arXiv:1804.01118) painted
with, and follows deepmind/spiral's `spiral/environments/libmypaint.py` and its C++
wrapper step by step:

* a paint step traces the quadratic Bezier from the pen through the control point to the
  end point with 50 `stroke_to` calls (points 1..50 of 51), blending only the pressure
  linearly; size (base log radius `log(size)`) and colour (HSV) are set for the whole
  stroke before it starts. When the pen was up, the stroke starts with the new pressure
  and one extra `stroke_to(start, pressure)` comes first;
* a move resets the libmypaint brush and strokes to the end point with pressure 0, so
  nothing is drawn;
* every `stroke_to` gets `dtime = float32(0.1)`, because SPIRAL's wrapper passes it
  through a C float. libmypaint's "pen down from zero pressure" rule tests
  `dtime > 0.1` in double precision, so the rounding makes it fire;
* each step is one `begin_atomic`/`end_atomic` pair on the surface;
* the canvas is read back as SPIRAL does: 15-bit fixed point, un-premultiplied, rounded
  to 8 bits.

Two deliberate differences from the public SPIRAL code, both switchable:

* SPIRAL records the pen at (y, y) after a move (libmypaint itself receives (y, x)); we
  record (y, x). `spiral_move_bug=True` reproduces SPIRAL.
* SPIRAL keeps one brush for the whole run, so its random stream runs on across episodes.
  We build a fresh brush at every reset. libmypaint seeds the brush's generator with a
  constant, so an episode's rendering depends only on its own actions; this is how the
  fixtures in `tests/fixtures` were made.

`jitter=False` switches off the brush's random dab offsets and radius noise: the base
values of `offset_by_random` and `radius_by_random` go to 0 *and* offset_by_random's
pressure curve is removed (dry_brush's offset base value is already 0; all its offset
comes from that curve, 1.4 at pressure 1). This is the deterministic part of the brush,
as in the `*_nojitter` fixture; zeroing the base values alone leaves the offsets on.

`record_dabs=True` (or `render_episodes_with_dabs`) records the arguments of every
`draw_dab` call, for debugging a renderer against libmypaint dab by dab.

The library is optional. `available()` tells whether the shared library and the brush
file were found; constructing `NativeLibMyPaint` without them raises `RuntimeError`
with the reason. Paths can be forced with the environment variables
`SPIRAL_JAX_LIBMYPAINT` (the shared library) and `SPIRAL_JAX_DRY_BRUSH` (the `.myb`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np

ACTION_NAMES = ("control", "end", "flag", "pressure", "size", "red", "green", "blue")
COLOR_NAMES = ("red", "green", "blue")
STROKES_PER_STEP = 50
# SPIRAL's DTIME = 0.1 reaches libmypaint through a C float: 0.10000000149011612.
DTIME = float(np.float32(0.1))
PRESSURE_VALUES = np.linspace(0.1, 1.0, 10)
COLOR_VALUES = np.linspace(0.0, 1.0, 20)
DEFAULT_BRUSH_SIZES = (1, 2, 4, 8, 12, 24)
# MYPAINT_TILE_SIZE in libmypaint's mypaint-tiled-surface.h.
TILE_SIZE = 64
# Opaque white in libmypaint's 15-bit fixed point (1.0 == 1 << 15), as SPIRAL clears.
_FIX15_ONE = 1 << 15

_LIBRARY_CANDIDATES = (
    "libmypaint-1.5.so.1",
    "/usr/lib/x86_64-linux-gnu/libmypaint-1.5.so.1",
    "/usr/lib/aarch64-linux-gnu/libmypaint-1.5.so.1",
    "/usr/lib/libmypaint-1.5.so.1",
    "/usr/local/lib/libmypaint-1.5.so.1",
    "/usr/local/lib/libmypaint.so",
)
# mypaint-data/1.0 holds the brush byte-identical to mypaint-brushes v1.3.0, the one
# SPIRAL used; 2.0's dry_brush.myb is a different file, so it only comes as a fallback.
_BRUSH_CANDIDATES = (
    "/usr/share/mypaint-data/1.0/brushes/classic/dry_brush.myb",
    "/usr/local/share/mypaint-data/1.0/brushes/classic/dry_brush.myb",
    "/usr/share/mypaint-data/2.0/brushes/classic/dry_brush.myb",
    "/usr/local/share/mypaint-data/2.0/brushes/classic/dry_brush.myb",
)


# Arguments of MyPaintSurfaceDrawDabFunction (mypaint-surface.h) after the surface.
DAB_FIELDS = (
    "x",
    "y",
    "radius",
    "color_r",
    "color_g",
    "color_b",
    "opaque",
    "hardness",
    "alpha_eraser",
    "aspect_ratio",
    "angle",
    "lock_alpha",
    "colorize",
)
_DRAW_DAB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *([ctypes.c_float] * len(DAB_FIELDS)))


class _TileRequest(ctypes.Structure):
    """MyPaintTileRequest (mypaint-tiled-surface.h, libmypaint 1.6)."""

    _fields_ = [
        ("tx", ctypes.c_int),
        ("ty", ctypes.c_int),
        ("readonly", ctypes.c_int),
        ("buffer", ctypes.POINTER(ctypes.c_uint16)),
        ("context", ctypes.c_void_p),
        ("thread_id", ctypes.c_int),
        ("mipmap_level", ctypes.c_int),
    ]


class _Rectangle(ctypes.Structure):
    """MyPaintRectangle (mypaint-rectangle.h)."""

    _fields_ = [(n, ctypes.c_int) for n in ("x", "y", "width", "height")]


def find_library() -> str | None:
    """Path or soname of libmypaint's shared library, or None when not installed."""
    forced = os.environ.get("SPIRAL_JAX_LIBMYPAINT")
    if forced:
        return forced if os.path.exists(forced) else None
    for name in ("mypaint-1.5", "mypaint"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    for cand in _LIBRARY_CANDIDATES:
        if os.path.isabs(cand) and os.path.exists(cand):
            return cand
    return None


def find_brush_file() -> str | None:
    """Path of `classic/dry_brush.myb`, or None when mypaint-brushes is not installed."""
    forced = os.environ.get("SPIRAL_JAX_DRY_BRUSH")
    if forced:
        return forced if os.path.exists(forced) else None
    for cand in _BRUSH_CANDIDATES:
        if os.path.exists(cand):
            return cand
    return None


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL, bytes, str]:
    """Loads the library once per process and declares the functions we call."""
    lib_path = find_library()
    if lib_path is None:
        raise RuntimeError(
            "libmypaint not found: install Debian/Ubuntu's libmypaint-1.5-1 "
            "(apt-get install libmypaint-1.5-1 mypaint-brushes) or set SPIRAL_JAX_LIBMYPAINT"
        )
    brush_path = find_brush_file()
    if brush_path is None:
        raise RuntimeError(
            "classic/dry_brush.myb not found: install mypaint-brushes "
            "(apt-get install mypaint-brushes) or set SPIRAL_JAX_DRY_BRUSH"
        )
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as err:
        raise RuntimeError(f"could not load libmypaint from {lib_path!r}: {err}") from err
    with open(brush_path, "rb") as f:
        brush_json = f.read()

    vp, ci, cf = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    req = ctypes.POINTER(_TileRequest)
    signatures = {
        "mypaint_brush_new": ([], vp),
        "mypaint_brush_unref": ([vp], None),
        "mypaint_brush_from_string": ([vp, ctypes.c_char_p], ci),
        "mypaint_brush_set_base_value": ([vp, ci, cf], None),
        "mypaint_brush_get_base_value": ([vp, ci], cf),
        "mypaint_brush_set_mapping_n": ([vp, ci, ci, ci], None),
        "mypaint_brush_get_mapping_n": ([vp, ci, ci], ci),
        "mypaint_brush_reset": ([vp], None),
        "mypaint_brush_new_stroke": ([vp], None),
        # libmypaint >= 1.5: dtime is a double; x, y, pressure, tilts are floats.
        "mypaint_brush_stroke_to": ([vp, vp, cf, cf, cf, cf, cf, ctypes.c_double], ci),
        "mypaint_brush_setting_from_cname": ([ctypes.c_char_p], ci),
        "mypaint_brush_input_from_cname": ([ctypes.c_char_p], ci),
        "mypaint_fixed_tiled_surface_new": ([ci, ci], vp),
        "mypaint_fixed_tiled_surface_interface": ([vp], vp),
        "mypaint_surface_begin_atomic": ([vp], None),
        "mypaint_surface_end_atomic": ([vp, ctypes.POINTER(_Rectangle)], None),
        "mypaint_surface_unref": ([vp], None),
        "mypaint_tile_request_init": ([req, ci, ci, ci, ci], None),
        "mypaint_tiled_surface_tile_request_start": ([vp, req], None),
        "mypaint_tiled_surface_tile_request_end": ([vp, req], None),
    }
    for name, (argtypes, restype) in signatures.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as err:
            raise RuntimeError(
                f"{lib_path!r} lacks {name}: libmypaint 1.5 or 1.6 is required"
            ) from err
        fn.argtypes = argtypes
        fn.restype = restype
    return lib, brush_json, brush_path


def available() -> bool:
    """Whether libmypaint and the dry_brush file are installed and loadable."""
    try:
        _load()
    except RuntimeError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why `available()` is False (for skip messages), or None when it is True."""
    try:
        _load()
    except RuntimeError as err:
        return str(err)
    return None


def rgb_to_hsv(red: float, green: float, blue: float) -> tuple[float, float, float]:
    """RGB in [0, 1] to HSV in [0, 1], the conversion SPIRAL feeds libmypaint.

    Hue is in turns; a grey (max - min <= 1e-4) gets hue and saturation 0.
    """
    red, green, blue = (float(np.clip(c, 0.0, 1.0)) for c in (red, green, blue))
    max_value = max(red, green, blue)
    delta = max_value - min(red, green, blue)
    if delta <= 0.0001:
        return 0.0, 0.0, max_value
    if red == max_value:
        hue = (green - blue) / delta
        if hue < 0.0:
            hue += 6.0
    elif green == max_value:
        hue = 2.0 + (blue - red) / delta
    else:
        hue = 4.0 + (red - green) / delta
    return hue / 6.0, delta / max_value, max_value


def quadratic_bezier(p_s: np.ndarray, p_c: np.ndarray, p_e: np.ndarray, n: int) -> np.ndarray:
    """n points of the quadratic Bezier s -> (control c) -> e at t = linspace(0, 1, n).

    Evaluated in float64 term by term in SPIRAL's order, so that the float32 points that
    reach libmypaint are the ones SPIRAL's would be.
    """
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) * (1 - t) * p_s + 2 * (1 - t) * t * p_c + t * t * p_e


def fix15_to_uint8(buf: np.ndarray) -> np.ndarray:
    """15-bit fixed-point premultiplied RGBA (uint16) to straight RGBA uint8, rounding.

    Same arithmetic as SPIRAL's `_fix15_to_rgba` (itself libmypaint's): un-premultiply
    with rounding, then scale to 0..255 with rounding.
    """
    buf = buf.astype(np.int64)
    rgb, alpha = buf[..., :3], buf[..., 3:]
    safe = np.maximum(alpha, 1)
    rgb = np.where(alpha == 0, 0, ((rgb << 15) + safe // 2) // safe)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    return ((255 * rgba + (_FIX15_ONE // 2)) // _FIX15_ONE).astype(np.uint8)


# fix15_to_uint8 of an opaque pixel's channel value v in [0, 1 << 15], tabulated: on a
# white background every pixel stays opaque, and the table is 10x faster than dividing.
_OPAQUE_TO_UINT8 = ((255 * np.arange(_FIX15_ONE + 1) + _FIX15_ONE // 2) // _FIX15_ONE).astype(
    np.uint8
)


class NativeLibMyPaint:
    """SPIRAL's libmypaint environment, rendering only (no rewards, masks or episode end).

    `reset()` and `step(action)` return the canvas as uint8 [W, W, 3] (or [W, W, 1]
    with `use_color=False`, as SPIRAL keeps only the first channel then). Float canvas
    = uint8 / 255, exactly SPIRAL's observation.

    Args:
      canvas_width: canvas side in pixels.
      grid_width: side of the action grid; cell g maps to `canvas_width * g / grid_width`.
      brush_sizes: brush radii in pixels; the brush's base log radius is `log(size)`.
      use_color: colour actions on; otherwise the brush stays black.
      use_pressure: pressure action on; otherwise pressure is 1.
      jitter: the brush's random dab offsets and radius noise on (dry_brush as shipped).
      spiral_move_bug: record the pen at (y, y) after a move, as the public SPIRAL does.
      record_dabs: keep every dab libmypaint draws (for debugging a renderer): after each
        `reset`/`step`, `last_dabs` is float32 [n, len(DAB_FIELDS)], the arguments of
        libmypaint's `draw_dab` in order (final position, radius, colour, opacity and
        hardness after all of the brush's dynamics and noise).
    """

    def __init__(
        self,
        canvas_width: int = 64,
        grid_width: int = 32,
        brush_sizes: Sequence[float] = DEFAULT_BRUSH_SIZES,
        use_color: bool = True,
        use_pressure: bool = True,
        jitter: bool = True,
        spiral_move_bug: bool = False,
        record_dabs: bool = False,
    ) -> None:
        if int(canvas_width) != canvas_width or canvas_width < 1:
            raise ValueError(f"canvas_width={canvas_width!r}: must be a positive integer")
        if int(grid_width) != grid_width or not 1 <= grid_width <= canvas_width:
            raise ValueError(
                f"grid_width={grid_width!r}: must be an integer in [1, canvas_width={canvas_width}]"
            )
        sizes = tuple(float(s) for s in brush_sizes)
        if not sizes or any(not np.isfinite(s) or s <= 0 for s in sizes):
            raise ValueError(
                f"brush_sizes={tuple(brush_sizes)!r}: must be a non-empty sequence of "
                "positive radii"
            )
        self._lib, self._brush_json, self.brush_file = _load()
        self.canvas_width = int(canvas_width)
        self.grid_width = int(grid_width)
        self.brush_sizes = sizes
        self._log_sizes = [float(np.log(s)) for s in sizes]
        self.use_color = bool(use_color)
        self.use_pressure = bool(use_pressure)
        self.jitter = bool(jitter)
        self.spiral_move_bug = bool(spiral_move_bug)

        self.action_spec: dict[str, int] = {
            "control": self.grid_width**2,
            "end": self.grid_width**2,
            "flag": 2,
        }
        if self.use_pressure:
            self.action_spec["pressure"] = len(PRESSURE_VALUES)
        if len(sizes) > 1:
            self.action_spec["size"] = len(sizes)
        if self.use_color:
            self.action_spec.update({c: len(COLOR_VALUES) for c in COLOR_NAMES})

        lib = self._lib
        self._settings = {
            name: lib.mypaint_brush_setting_from_cname(name.encode())
            for name in (
                "radius_logarithmic",
                "color_h",
                "color_s",
                "color_v",
                "offset_by_random",
                "radius_by_random",
            )
        }
        if min(self._settings.values()) < 0:
            raise RuntimeError(f"libmypaint does not know some settings: {self._settings}")
        self._pressure_input = lib.mypaint_brush_input_from_cname(b"pressure")

        self._surface_obj = lib.mypaint_fixed_tiled_surface_new(
            self.canvas_width, self.canvas_width
        )
        if not self._surface_obj:
            raise RuntimeError("mypaint_fixed_tiled_surface_new failed")
        self._surface = lib.mypaint_fixed_tiled_surface_interface(self._surface_obj)
        self._tiles = self._map_tiles()
        self._brush = None
        self._roi = _Rectangle()
        self._dabs: list[tuple[float, ...]] = []
        self.last_dabs = np.zeros((0, len(DAB_FIELDS)), np.float32)
        self.record_dabs = bool(record_dabs)
        if self.record_dabs:
            self._hook_draw_dab()
        self.reset()

    # -- libmypaint plumbing -------------------------------------------------------------

    def _map_tiles(self) -> np.ndarray:
        """A numpy view [tiles_h, tiles_w, 64, 64, 4] uint16 of the surface's own memory.

        The fixed tiled surface hands out direct pointers into its buffer, so the views
        stay valid (and see every dab) for the surface's lifetime.
        """
        n_tiles = -(-self.canvas_width // TILE_SIZE)
        rows = []
        for ty in range(n_tiles):
            row = []
            for tx in range(n_tiles):
                request = _TileRequest()
                self._lib.mypaint_tile_request_init(ctypes.byref(request), 0, tx, ty, 0)
                self._lib.mypaint_tiled_surface_tile_request_start(
                    self._surface_obj, ctypes.byref(request)
                )
                tile = np.ctypeslib.as_array(request.buffer, shape=(TILE_SIZE, TILE_SIZE, 4))
                self._lib.mypaint_tiled_surface_tile_request_end(
                    self._surface_obj, ctypes.byref(request)
                )
                row.append(tile)
            rows.append(row)
        return rows

    def _hook_draw_dab(self) -> None:
        """Routes the surface's draw_dab (first field of MyPaintSurface) through Python.

        The brush calls `surface->draw_dab` for every dab; the hook records the call's
        arguments and forwards them to the tiled surface's own implementation.
        """
        slot = ctypes.c_void_p.from_address(self._surface)
        original = _DRAW_DAB(slot.value)

        def draw_dab(surface, *args):
            self._dabs.append(args)
            return original(surface, *args)

        self._draw_dab_hook = _DRAW_DAB(draw_dab)  # must outlive the surface
        self._draw_dab_original = original
        slot.value = ctypes.cast(self._draw_dab_hook, ctypes.c_void_p).value

    def _take_dabs(self) -> None:
        if self.record_dabs:
            self.last_dabs = np.array(self._dabs, np.float32).reshape(-1, len(DAB_FIELDS))
            self._dabs = []

    def _new_brush(self) -> None:
        """A fresh dry_brush: libmypaint seeds its generator with a constant (1000)."""
        lib = self._lib
        if self._brush is not None:
            lib.mypaint_brush_unref(self._brush)
        self._brush = lib.mypaint_brush_new()
        if not lib.mypaint_brush_from_string(self._brush, self._brush_json):
            raise RuntimeError(f"libmypaint could not parse {self.brush_file}")
        if not self.jitter:
            for name in ("offset_by_random", "radius_by_random"):
                setting = self._settings[name]
                lib.mypaint_brush_set_base_value(self._brush, setting, 0.0)
                # dry_brush's offset comes entirely from its pressure curve (base 0).
                lib.mypaint_brush_set_mapping_n(self._brush, setting, self._pressure_input, 0)

    def _set_base(self, name: str, value: float) -> None:
        self._lib.mypaint_brush_set_base_value(self._brush, self._settings[name], value)

    def _stroke_to(self, x: float, y: float, pressure: float) -> None:
        self._lib.mypaint_brush_stroke_to(
            self._brush, self._surface, x, y, pressure, 0.0, 0.0, DTIME
        )

    def _canvas(self) -> np.ndarray:
        if len(self._tiles) == 1:
            buf = self._tiles[0][0]
        else:
            buf = np.concatenate([np.concatenate(row, axis=1) for row in self._tiles], axis=0)
        buf = buf[: self.canvas_width, : self.canvas_width]
        channels = 3 if self.use_color else 1
        if (buf[..., 3] == _FIX15_ONE).all():
            return _OPAQUE_TO_UINT8[buf[..., :channels]]
        return fix15_to_uint8(buf)[..., :channels]

    def close(self) -> None:
        """Frees the brush and the surface (also done on garbage collection)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_brush", None) is not None:
            lib.mypaint_brush_unref(self._brush)
            self._brush = None
        if getattr(self, "_surface", None):
            self._tiles = None
            lib.mypaint_surface_unref(self._surface)
            self._surface = None

    def __del__(self) -> None:
        self.close()

    # -- SPIRAL's semantics --------------------------------------------------------------

    def _set_appearance(self, log_size: float, hsv: tuple[float, float, float] | None) -> None:
        self._set_base("radius_logarithmic", log_size)
        if hsv is not None:
            for name, value in zip(("color_h", "color_s", "color_v"), hsv, strict=True):
                self._set_base(name, value)

    def _move_brush(self, y: float, x: float) -> None:
        self._lib.mypaint_brush_reset(self._brush)
        self._lib.mypaint_brush_new_stroke(self._brush)
        self._stroke_to(x, y, 0.0)

    def reset(self) -> np.ndarray:
        """White canvas, fresh brush, pen up at (0, 0), smallest size, black."""
        for row in self._tiles:
            for tile in row:
                tile.fill(_FIX15_ONE)
        self._new_brush()
        self._pen_y, self._pen_x = 0.0, 0.0
        self._pressure = 0.0 if self.use_pressure else 1.0
        self._painting = False
        self._move_brush(0.0, 0.0)
        self._set_appearance(self._log_sizes[0], rgb_to_hsv(0.0, 0.0, 0.0))
        self._take_dabs()
        return self._canvas()

    def _grid_to_canvas(self, index: int) -> tuple[float, float]:
        gy, gx = divmod(int(index), self.grid_width)
        return (
            self.canvas_width * float(gy) / self.grid_width,
            self.canvas_width * float(gx) / self.grid_width,
        )

    def validate_action(self, action: Mapping[str, int]) -> dict[str, int]:
        """The action parts this configuration uses, as ints; ValueError on bad ones.

        Parts that the configuration drops (e.g. `pressure` with use_pressure=False) are
        ignored, as SPIRAL's spec does not contain them.
        """
        out = {}
        for name, n in self.action_spec.items():
            if name not in action:
                raise ValueError(f"action lacks {name!r}; needs {list(self.action_spec)}")
            value = int(action[name])
            if not 0 <= value < n:
                raise ValueError(f"action[{name!r}]={value}: must be in [0, {n})")
            out[name] = value
        return out

    def step(self, action: Mapping[str, int]) -> np.ndarray:
        """One paint (flag 1) or move (flag 0) step; returns the canvas after it."""
        action = self.validate_action(action)
        end_y, end_x = self._grid_to_canvas(action["end"])
        self._lib.mypaint_surface_begin_atomic(self._surface)
        if action["flag"] == 1:
            ctrl_y, ctrl_x = self._grid_to_canvas(action["control"])
            pressure = PRESSURE_VALUES[action["pressure"]] if self.use_pressure else 1.0
            log_size = self._log_sizes[action.get("size", 0)]
            hsv = (
                rgb_to_hsv(*(COLOR_VALUES[action[c]] for c in COLOR_NAMES))
                if self.use_color
                else None
            )
            self._set_appearance(log_size, hsv)
            # Pen up: SPIRAL pretends the appearance did not change, so the stroke
            # starts at the new pressure rather than blending up from the old one.
            p_s = self._pressure if self._painting else pressure
            start = np.array([self._pen_y, self._pen_x])
            points = quadratic_bezier(
                start, np.array([ctrl_y, ctrl_x]), np.array([end_y, end_x]), STROKES_PER_STEP + 1
            )
            if not self._painting:
                self._stroke_to(self._pen_x, self._pen_y, p_s)
            for k in range(STROKES_PER_STEP):
                alpha = float(k + 1) / STROKES_PER_STEP
                p = p_s * (1.0 - alpha) + pressure * alpha
                self._stroke_to(points[k + 1, 1], points[k + 1, 0], p)
            self._pen_y, self._pen_x = end_y, end_x
            self._pressure = pressure
            self._painting = True
        else:
            self._pen_y = end_y
            self._pen_x = end_y if self.spiral_move_bug else end_x
            self._painting = False
            self._move_brush(end_y, end_x)
        self._lib.mypaint_surface_end_atomic(self._surface, ctypes.byref(self._roi))
        self._take_dabs()
        return self._canvas()


def episode_arrays(
    actions: Mapping[str, np.ndarray], spec: Mapping[str, int]
) -> tuple[dict[str, np.ndarray], int, int]:
    """The parts of `actions` that `spec` uses, checked: (arrays [K, T], K, T).

    ValueError when a part is missing, not an integer array [K, T], shaped unlike the
    others, or out of range.
    """
    arrays = {}
    shape = None
    for name in spec:
        if name not in actions:
            raise ValueError(f"actions lack {name!r}; this configuration needs {list(spec)}")
        arr = np.asarray(actions[name])
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"actions[{name!r}] has shape {arr.shape} and dtype {arr.dtype}: "
                "must be an integer array [episodes, steps]"
            )
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ValueError(f"actions[{name!r}] has shape {arr.shape}, others {shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= spec[name]):
            raise ValueError(
                f"actions[{name!r}] holds values in [{arr.min()}, {arr.max()}]: "
                f"must be in [0, {spec[name]})"
            )
        arrays[name] = arr
    assert shape is not None
    return arrays, shape[0], shape[1]


def render_episodes(actions: Mapping[str, np.ndarray], **settings) -> np.ndarray:
    """Renders K episodes of T steps: uint8 [K, T+1, W, W, C], index 0 after reset.

    `actions` maps part name -> int [K, T]; parts the settings drop are ignored.
    `settings` are `NativeLibMyPaint`'s keyword arguments.
    """
    return _render(actions, settings)[0]


def render_episodes_with_dabs(
    actions: Mapping[str, np.ndarray], **settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`render_episodes` plus every dab libmypaint drew, for debugging a renderer.

    Returns (canvases, dabs float32 [N, len(DAB_FIELDS)], episode int32 [N], step int32
    [N]); `step` t >= 1 is the step whose canvas `canvases[:, t]` shows the dab.
    """
    return _render(actions, dict(settings, record_dabs=True))


def _render(actions, settings):
    env = NativeLibMyPaint(**settings)
    dabs, dab_episode, dab_step = [], [], []
    try:
        arrays, k_eps, t_steps = episode_arrays(actions, env.action_spec)
        w, c = env.canvas_width, (3 if env.use_color else 1)
        out = np.empty((k_eps, t_steps + 1, w, w, c), np.uint8)
        for k in range(k_eps):
            out[k, 0] = env.reset()
            for t in range(t_steps):
                out[k, t + 1] = env.step({n: a[k, t] for n, a in arrays.items()})
                if env.record_dabs:
                    dabs.append(env.last_dabs)
                    dab_episode.append(np.full(len(env.last_dabs), k, np.int32))
                    dab_step.append(np.full(len(env.last_dabs), t + 1, np.int32))
    finally:
        env.close()
    if not dabs:
        return out, np.zeros((0, len(DAB_FIELDS)), np.float32), *([np.zeros(0, np.int32)] * 2)
    return out, np.concatenate(dabs), np.concatenate(dab_episode), np.concatenate(dab_step)
