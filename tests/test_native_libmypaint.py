"""The ctypes libmypaint reference (`tools.native_libmypaint`): fixtures, SPIRAL's
semantics, bad input, and the throughput benchmark `tools.native_throughput`.

Tests that need the real library are skipped where Debian's libmypaint-1.5-1 and
mypaint-brushes are not installed; the fixtures in `tests/fixtures` are part of the
repository, so a missing one fails.
"""

from __future__ import annotations

import colorsys
import pathlib

import numpy as np
import pytest

from tools import libmypaint_episodes as make_episodes
from tools import native_libmypaint as native
from tools import native_throughput

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
# libmypaint rendering the fixture actions again, per step and on the final canvas (MAE
# in [0, 1]): bit-exact with the Debian 12 packages the fixtures were made with
# (tests/fixtures/README.md); 0.0002 leaves room for another build of libmypaint 1.6.
SELF_MAE = 2e-4

needs_libmypaint = pytest.mark.skipif(
    not native.available(), reason=f"native libmypaint missing: {native.unavailable_reason()}"
)


def _fixture(name: str):
    path = FIXTURES / name
    assert path.is_file(), f"fixture {path} missing; tests/fixtures/README.md regenerates it"
    return np.load(path)


def _actions(data) -> dict[str, np.ndarray]:
    return {n: data[f"actions_{n}"] for n in native.ACTION_NAMES}


def _mae(a: np.ndarray, b: np.ndarray, axis=None) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=axis) / 255.0


def _episode(steps: list[dict], **settings) -> np.ndarray:
    actions = {n: np.array([[s[n] for s in steps]], np.int32) for n in native.ACTION_NAMES}
    return native.render_episodes(actions, **settings)[0]


def _paint(cy, cx, ey, ex, pressure=9, size=0, rgb=(0, 0, 0), grid=32):
    return dict(
        control=cy * grid + cx,
        end=ey * grid + ex,
        flag=1,
        pressure=pressure,
        size=size,
        red=rgb[0],
        green=rgb[1],
        blue=rgb[2],
    )


def _move(ey, ex, grid=32):
    return dict(control=0, end=ey * grid + ex, flag=0, pressure=0, size=0, red=0, green=0, blue=0)


# -- fixtures ---------------------------------------------------------------------------


@needs_libmypaint
@pytest.mark.parametrize(
    "fixture, jitter",
    [("libmypaint_episodes_small_nojitter.npz", False), ("libmypaint_episodes_small.npz", True)],
)
@pytest.mark.parametrize("key, move_bug", [("canvases_fixed_move", False), ("canvases", True)])
def test_reproduces_fixture(fixture, jitter, key, move_bug):
    data = _fixture(fixture)
    out = native.render_episodes(_actions(data), jitter=jitter, spiral_move_bug=move_bug)
    ref = data[key]
    assert out.shape == ref.shape and out.dtype == np.uint8
    per_step = _mae(out, ref, axis=(0, 2, 3, 4))
    assert per_step.max() <= SELF_MAE, per_step
    assert _mae(out[:, -1], ref[:, -1]) <= SELF_MAE
    # And the two move semantics really differ on these actions, so the flag matters.
    other = data["canvases" if key == "canvases_fixed_move" else "canvases_fixed_move"]
    assert _mae(out[:, -1], other[:, -1]) > 0.02


def test_sample_actions_reproduce_fixture_actions():
    data = _fixture("libmypaint_episodes_small.npz")
    spec = dict(
        control=32 * 32, end=32 * 32, flag=2, pressure=10, size=6, red=20, green=20, blue=20
    )
    actions = make_episodes.sample_actions(0, 16, 19, 0.7, spec)
    for name in native.ACTION_NAMES:
        np.testing.assert_array_equal(actions[name], data[f"actions_{name}"], err_msg=name)


def test_single_stroke_actions_cover_sizes_and_pressures():
    actions, info = make_episodes.single_stroke_actions(0, 6, 32)
    k = len(info)
    assert all(a.shape == (k, 1) for a in actions.values())
    assert (actions["flag"] == 1).all()
    assert (actions["red"] == 0).all() and (actions["green"] == 0).all()
    pairs = set(
        zip(actions["size"][:, 0].tolist(), actions["pressure"][:, 0].tolist(), strict=True)
    )
    assert pairs == {(s, p) for s in range(6) for p in (0, 4, 9)}
    assert actions["end"].max() < 32 * 32 and actions["control"].max() < 32 * 32


# -- SPIRAL's semantics -----------------------------------------------------------------


def test_rgb_to_hsv_matches_colorsys():
    for r in native.COLOR_VALUES[::3]:
        for g in native.COLOR_VALUES[::3]:
            for b in native.COLOR_VALUES[::3]:
                np.testing.assert_allclose(
                    native.rgb_to_hsv(r, g, b), colorsys.rgb_to_hsv(r, g, b), atol=1e-12
                )


def test_quadratic_bezier_matches_de_casteljau():
    rng = np.random.default_rng(0)
    s, c, e = rng.uniform(0, 64, size=(3, 2))
    points = native.quadratic_bezier(s, c, e, 51)
    for i, t in enumerate(np.linspace(0, 1, 51)):
        a, b = s + t * (c - s), c + t * (e - c)
        np.testing.assert_allclose(points[i], a + t * (b - a), atol=1e-12)
    np.testing.assert_array_equal(points[0], s)
    np.testing.assert_array_equal(points[-1], e)


def test_fix15_conversion_rounds_like_spiral():
    rng = np.random.default_rng(0)
    alpha = rng.integers(1, 1 << 15, size=(50, 1)).astype(np.uint16)
    alpha[:5] = 1 << 15
    rgb = (rng.uniform(size=(50, 3)) * alpha).astype(np.uint16)
    out = native.fix15_to_uint8(np.concatenate([rgb, alpha], axis=1))
    straight = rgb.astype(np.float64) / alpha
    np.testing.assert_array_less(np.abs(out[:, :3] - 255 * straight), 0.5 + 255 / 2**15 + 1e-9)
    np.testing.assert_array_equal(out[:5, 3], 255)
    # The opaque lookup table is the same map.
    v = np.arange((1 << 15) + 1).astype(np.uint16)
    opaque = np.stack([v, v, v, np.full_like(v, 1 << 15)], axis=-1)
    np.testing.assert_array_equal(native._OPAQUE_TO_UINT8[v], native.fix15_to_uint8(opaque)[:, 0])


@needs_libmypaint
def test_reset_is_white_and_move_draws_nothing():
    env = native.NativeLibMyPaint(jitter=True)
    white = env.reset()
    assert white.shape == (64, 64, 3) and (white == 255).all()
    assert (env.step(_move(20, 5)) == 255).all()
    assert (env.step(_move(3, 30)) == 255).all()
    env.close()


@needs_libmypaint
def test_stroke_after_move_starts_at_move_end():
    # Move to (y, x) = (24, 4) (canvas 48, 8), then a short straight stroke to (24, 8).
    # Fixed: ink only around row 48, columns 8..16. SPIRAL's bug starts at (24, 24)
    # (canvas (48, 48)) and drags the stroke back across the canvas to column 16.
    steps = [_move(24, 4), _paint(24, 6, 24, 8, size=2)]
    fixed = _episode(steps, jitter=False)[-1, ..., 0].astype(float)
    bug = _episode(steps, jitter=False, spiral_move_bug=True)[-1, ..., 0].astype(float)
    ink_fixed, ink_bug = 255 - fixed, 255 - bug
    assert ink_fixed[44:53, 6:19].sum() > 0.95 * ink_fixed.sum() > 0
    assert ink_fixed[:, 24:].sum() == 0
    assert ink_bug[44:53, 30:46].sum() > 0.2 * ink_bug.sum() > 0


@needs_libmypaint
def test_episodes_are_independent_with_fresh_brush():
    data = _fixture("libmypaint_episodes_small.npz")
    actions = _actions(data)
    last = {n: a[-1:] for n, a in actions.items()}
    alone = native.render_episodes(last, jitter=True)[0]
    np.testing.assert_array_equal(alone, data["canvases_fixed_move"][-1])


@needs_libmypaint
def test_jitter_off_removes_randomness():
    # The same final stroke after two different first strokes: the first strokes use
    # different numbers of random draws, so with jitter the final stroke differs; without
    # it, it must not. Slow tracking makes a move land 0.67 % short of its target,
    # measured from where the brush was; four moves to the same point shrink that memory
    # of the first stroke below float32 resolution.
    final = [_move(24, 20)] * 4 + [_paint(24, 28, 30, 30, pressure=9, size=2)]
    a = [_paint(2, 6, 4, 4, size=0)] + final
    b = [_paint(6, 1, 6, 6, size=1)] + final
    for jitter, same in ((False, True), (True, False)):
        ca, cb = (_episode(s, jitter=jitter)[-1, 36:, 36:] for s in (a, b))
        assert (255 - ca).sum() > 0
        assert np.array_equal(ca, cb) == same, jitter


@needs_libmypaint
def test_single_move_remembers_previous_position():
    # libmypaint's slow tracking runs before its reset: a move lands at
    # old + 0.9933 * (target - old), so the stroke after one move still depends on where
    # the brush was, even without jitter (the JAX renderer must model this).
    final = [_move(24, 20), _paint(24, 28, 30, 30, pressure=9, size=2)]
    ca, cb = (
        _episode([_paint(2, 6, k, k, size=0)] + final, jitter=False)[-1, 36:, 36:] for k in (4, 6)
    )
    assert not np.array_equal(ca, cb)


@needs_libmypaint
def test_pressure_off_is_full_pressure_and_grayscale_is_black():
    data = _fixture("libmypaint_episodes_small_nojitter.npz")
    actions = {n: a[:4] for n, a in _actions(data).items()}
    full = dict(actions, pressure=np.full_like(actions["pressure"], 9))
    np.testing.assert_array_equal(
        native.render_episodes(actions, jitter=False, use_pressure=False),
        native.render_episodes(full, jitter=False),
    )
    black = dict(actions, **{c: np.zeros_like(actions[c]) for c in native.COLOR_NAMES})
    gray = native.render_episodes(actions, jitter=False, use_color=False)
    color = native.render_episodes(black, jitter=False)
    assert gray.shape == (4, 20, 64, 64, 1)
    np.testing.assert_array_equal(gray[..., 0], color[..., 0])
    np.testing.assert_array_equal(color[..., 0], color[..., 2])


@needs_libmypaint
def test_one_brush_size_and_other_canvas():
    steps = [_paint(4, 20, 20, 28, size=0), _move(2, 2), _paint(30, 2, 16, 16, size=0)]
    out = _episode(steps, jitter=False, canvas_width=96, grid_width=32, brush_sizes=(3,))
    assert out.shape == (4, 96, 96, 3)
    assert (out[-1] < 128).sum() > 50
    # A canvas spanning two tiles shows ink on both sides of the tile border at 64.
    assert (out[-1, :64] < 200).any() and (out[-1, 64:] < 200).any()


# -- bad input and availability ---------------------------------------------------------


@needs_libmypaint
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid_width=65), "grid_width=65"),
        (dict(canvas_width=0), "canvas_width=0"),
        (dict(brush_sizes=()), "brush_sizes"),
        (dict(brush_sizes=(1, 0)), "brush_sizes"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        native.NativeLibMyPaint(**kwargs)


@needs_libmypaint
def test_bad_actions_raise():
    env = native.NativeLibMyPaint()
    with pytest.raises(ValueError, match=r"action\['end'\]=1024"):
        env.step(dict(_move(0, 0), end=1024))
    with pytest.raises(ValueError, match="lacks 'size'"):
        env.step({k: v for k, v in _move(0, 0).items() if k != "size"})
    env.close()
    good = {n: np.zeros((2, 3), np.int32) for n in native.ACTION_NAMES}
    with pytest.raises(ValueError, match="shape"):
        native.render_episodes(dict(good, flag=np.zeros((2, 4), np.int32)))
    with pytest.raises(ValueError, match=r"actions\['red'\] holds values in \[20, 20\]"):
        native.render_episodes(dict(good, red=np.full((2, 3), 20)))
    # Parts a configuration drops are ignored.
    out = native.render_episodes(good, use_color=False, use_pressure=False, brush_sizes=(2,))
    assert out.shape == (2, 4, 64, 64, 1)


def test_unavailable_library_is_reported(monkeypatch):
    monkeypatch.setenv("SPIRAL_JAX_LIBMYPAINT", "/nonexistent/libmypaint.so")
    native._load.cache_clear()
    try:
        assert not native.available()
        assert "libmypaint not found" in native.unavailable_reason()
        with pytest.raises(RuntimeError, match="libmypaint not found"):
            native.NativeLibMyPaint()
    finally:
        monkeypatch.delenv("SPIRAL_JAX_LIBMYPAINT")
        native._load.cache_clear()


@needs_libmypaint
def test_native_steps_per_second_runs():
    spec = native.NativeLibMyPaint().action_spec
    actions = make_episodes.sample_actions(0, 4, 3, 0.7, spec)
    rate = native_throughput.native_steps_per_second(actions, n_processes=2, jitter=False)
    assert np.isfinite(rate) and rate > 10
    with pytest.raises(ValueError, match="n_processes=0"):
        native_throughput.native_steps_per_second(actions, n_processes=0)


@needs_libmypaint
def test_recorded_dabs_follow_dry_brush_settings():
    # A straight full-pressure black stroke of size 4 from (0, 0) to canvas (32, 32).
    actions = {n: np.zeros((1, 1), np.int32) for n in native.ACTION_NAMES}
    actions.update(
        control=np.array([[8 * 32 + 8]]),
        end=np.array([[16 * 32 + 16]]),
        flag=np.ones((1, 1), np.int32),
        pressure=np.full((1, 1), 9),
        size=np.full((1, 1), 2),
        red=np.full((1, 1), 19),
    )
    canvases, dabs, episode, step = native.render_episodes_with_dabs(actions, jitter=False)
    np.testing.assert_array_equal(canvases, native.render_episodes(actions, jitter=False))
    assert (episode == 0).all() and (step == 1).all()
    fields = {f: dabs[:, i] for i, f in enumerate(native.DAB_FIELDS)}
    # opaque 0.8 + 0.2 p times opaque_multiply p, p = 1; hardness 0.2; pure red.
    np.testing.assert_allclose(fields["opaque"], 1.0, atol=1e-6)
    np.testing.assert_allclose(fields["hardness"], 0.2, atol=1e-6)
    np.testing.assert_allclose(dabs[:, 3:6], np.tile([1.0, 0.0, 0.0], (len(dabs), 1)), atol=1e-5)
    # On the diagonal. The radius is largest at rest: libmypaint maps speed s to the input
    # m log(gamma + s) + q with gamma = exp(speed2_gamma), m = 0.015 (45 + gamma) and
    # q = 0.5 - m log(45 + gamma), which is -0.398 at s = 0, not 0; dry_brush's speed2
    # curve (0, 0.042857) -> (4, -0.3) extended to it gives log radius log(4) + 0.077.
    np.testing.assert_allclose(fields["x"], fields["y"], atol=1e-4)
    gamma = np.exp(4.0)
    m = 0.015 * (45 + gamma)
    rest_input = m * np.log(gamma) + (0.5 - m * np.log(45 + gamma))
    rest_radius = 4 * np.exp(0.042857 + rest_input * (-0.3 - 0.042857) / 4)
    np.testing.assert_allclose(fields["radius"].max(), rest_radius, rtol=1e-6)
    assert fields["radius"].min() > 4.0
    # Dab spacing: 6 dabs per actual radius plus 6 per basic radius (log(4)) of travel.
    length = np.hypot(32, 32)
    expected = length * 6 * (1 / fields["radius"].mean() + 1 / 4.0)
    assert abs(len(dabs) - expected) < 0.03 * expected, (len(dabs), expected)
