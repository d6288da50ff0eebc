"""spiral_jax.program and program_svg: an episode's program, its JSON, its replay and
its SVG, checked against the environment (its state during the episode, its canvases)
and against an independent SVG renderer (resvg)."""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET

import jax
import numpy as np
import pytest
import resvg_py
from PIL import Image

from experiments.configs import small as small_config
from spiral_jax import agent as agent_lib
from spiral_jax import program as P
from spiral_jax import program_svg
from spiral_jax import rollout as rollout_lib
from spiral_jax.baselines import random_actions
from spiral_jax.envs.libmypaint import COLOR_VALUES, PRESSURE_VALUES, LibMyPaint, play

# Colour, pressure and three brush sizes: every part of the action space.
COLOR_ENV = dict(episode_length=8, canvas_width=16, grid_width=8, brush_sizes=(1, 2, 4),
                 use_color=True, use_pressure=True, brush_jitter=False, dab_budget=16)
# The pretrained mnist5k agents' environment (experiments/configs/mnist5k.py).
MNIST5K_ENV = dict(episode_length=10, canvas_width=32, grid_width=16, brush_sizes=(1, 2),
                   use_color=False, use_pressure=False, brush_jitter=False, dab_budget=32)
TINY_AGENT = agent_lib.AgentConfig(channels=8, num_res_blocks=1, lstm_size=32,
                                   torso_output=32, noise_dim=4)

# resvg's rendering of program.svg against the canvas, 100 episodes of uniform random
# actions in MNIST5K_ENV (seed 0; docs/programs.md has the table and the command):
# MAE mean 0.026 (max 0.042), IoU of inked pixels (darkest channel < 0.5) mean 0.915
# (min 0.74); a blank canvas scores MAE 0.25. The brush is soft and the SVG band hard,
# so they differ at stroke edges; bounds leave ~30 % room for renderer versions.
SVG_EPISODES = 100
SVG_MAE_MEAN, SVG_MAE_MAX = 0.035, 0.06
SVG_IOU_MEAN, SVG_IOU_MIN = 0.88, 0.6


def _random_episodes(settings, n, seed):
    """n episodes of uniform random actions: (env, actions [n, T] per part, final
    canvases [n, W, W, C])."""
    env = LibMyPaint(**settings)
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    spec = dict(env.action_spec())
    actions = jax.vmap(lambda k: random_actions(spec, k, env.episode_length - 1))(keys)
    finals = jax.jit(jax.vmap(lambda k, a: play(env, k, a)[-1]))(keys, actions)
    return env, jax.device_get(actions), np.asarray(finals)


def _episode(actions, i):
    return {k: np.array(v[i]) for k, v in actions.items()}


@pytest.fixture(scope="module")
def color_episodes():
    return _random_episodes(COLOR_ENV, 8, seed=3)


@pytest.fixture(scope="module")
def agent_episodes():
    """8 episodes of a freshly initialised agent in COLOR_ENV, sampled."""
    env = LibMyPaint(**COLOR_ENV)
    agent = agent_lib.make_agent(env.action_spec(), TINY_AGENT)
    params = agent_lib.init_params(agent, jax.random.key(0), env.observation_shape)
    traj = rollout_lib.make_episode_rollout(env, agent, 8)(params, jax.random.key(1))
    return env, jax.device_get(traj)


# ------------------------------------------------------------------------------------
# What a program says.


def test_steps_mean_what_the_environment_does(color_episodes):
    env, actions, _ = color_episodes
    cell = COLOR_ENV["canvas_width"] / COLOR_ENV["grid_width"]
    step = jax.jit(env.step)
    for i in range(len(actions["flag"])):
        program = P.from_actions(env, _episode(actions, i))
        # The environment's own record of the pen and pressure, step by step.
        state, _ = env.reset(jax.random.PRNGKey(0))
        for s in program.steps:
            a = s.action
            np.testing.assert_allclose(s.start, np.asarray(state.pen), atol=1e-5)
            gy, gx = divmod(a["end"], COLOR_ENV["grid_width"])
            assert s.end == (gx * cell, gy * cell)
            assert s.paint == (a["flag"] == 1)
            was_down, pressure_before = bool(state.is_painting), float(state.pressure)
            state, _ = step(state, {k: np.int32(v) for k, v in a.items()})
            np.testing.assert_allclose(s.end, np.asarray(state.pen), atol=1e-5)
            if not s.paint:
                assert s.control is s.radius is s.pressure is s.color is None
                continue
            gy, gx = divmod(a["control"], COLOR_ENV["grid_width"])
            assert s.control == (gx * cell, gy * cell)
            assert s.radius == COLOR_ENV["brush_sizes"][a["size"]]
            assert s.pressure == pytest.approx(PRESSURE_VALUES[a["pressure"]], abs=1e-6)
            assert s.pressure == pytest.approx(float(state.pressure), abs=1e-6)
            want_start = pressure_before if was_down else s.pressure
            assert s.pressure_start == pytest.approx(want_start, abs=1e-6)
            assert s.color == pytest.approx(
                [COLOR_VALUES[a[c]] for c in ("red", "green", "blue")], abs=1e-6)


def test_first_step_starts_at_the_reset_pen_and_grey_ink_is_black():
    env = LibMyPaint(**MNIST5K_ENV)
    t = env.episode_length - 1
    actions = {k: np.zeros(t, np.int32) for k in env.action_spec()}
    actions["flag"][:] = 1
    actions["end"][:] = np.arange(t) * 17  # cells (1, 1), (2, 2), ...
    program = P.from_actions(env, actions)
    assert program.steps[0].start == (0.0, 0.0)
    assert program.steps[1].start == program.steps[0].end == (0.0, 0.0)
    assert program.steps[2].start == (2.0, 2.0)
    assert all(s.color == (0.0, 0.0, 0.0) and s.pressure == 1.0 for s in program.steps)
    assert len(program.strokes) == t


# ------------------------------------------------------------------------------------
# JSON and replay.


def test_json_round_trip(agent_episodes):
    env, traj = agent_episodes
    for i in range(traj.action["flag"].shape[1]):
        program = P.from_trajectory(env, traj, i, info={"episode": i, "seed": 1})
        text = P.to_json(program)
        again = P.from_json(text)
        assert again == program
        assert P.to_json(again) == text
        data = json.loads(text)
        assert data["settings"] == {**COLOR_ENV, "brush_sizes": [1.0, 2.0, 4.0]}
        assert data["action_spec"] == dict(env.action_spec())
        assert len(data["steps"]) == COLOR_ENV["episode_length"] - 1
        for k, v in P.to_actions(again).items():
            np.testing.assert_array_equal(v, traj.action[k][:, i])


def test_save_and_load(tmp_path, color_episodes):
    env, actions, _ = color_episodes
    program = P.from_actions(env, _episode(actions, 0))
    P.save(program, tmp_path / "program.json")
    assert P.load(tmp_path / "program.json") == program


def test_replay_equals_the_agents_canvases(agent_episodes):
    env, traj = agent_episodes
    painted = 0
    for i in range(traj.action["flag"].shape[1]):
        program = P.from_json(P.to_json(P.from_trajectory(env, traj, i)))
        painted += len(program.strokes)
        np.testing.assert_array_equal(P.replay(program), traj.final_canvas[i])
    assert painted > 0


def test_replay_equals_random_episodes(color_episodes):
    env, actions, finals = color_episodes
    for i in range(len(finals)):
        program = P.from_json(P.to_json(P.from_actions(env, _episode(actions, i))))
        np.testing.assert_array_equal(P.replay(program), finals[i])


@pytest.mark.slow
def test_replay_with_jitter_draws_another_sample_of_the_brush(color_episodes):
    env, actions, _ = color_episodes
    jittery = LibMyPaint(**{**COLOR_ENV, "brush_jitter": True})
    program = P.from_actions(jittery, _episode(actions, 0))
    a = P.replay(program, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, P.replay(program, jax.random.PRNGKey(1)))
    assert not np.array_equal(a, P.replay(program, jax.random.PRNGKey(2)))


# ------------------------------------------------------------------------------------
# Bad programs.


def _good_dict(color_episodes):
    env, actions, _ = color_episodes
    actions = _episode(actions, 1)
    actions["flag"][:3] = [0, 1, 1]
    return P.to_dict(P.from_actions(env, actions))


def _set(path, value):
    def edit(d):
        target = d
        for k in path[:-1]:
            target = target[k]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return edit


BAD = {
    "canvas_width": (_set(["settings", "canvas_width"], -16), r"canvas_width.*-16"),
    "unknown setting": (_set(["settings", "tilt"], 1), r"unknown environment settings \['tilt'\]"),
    "missing setting": (_set(["settings", "dab_budget"], KeyError), r"dab_budget"),
    "id out of range": (_set(["steps", 2, "action", "end"], 500),
                        r"steps\[2\].*'end'.*500.*\[0, 63\]"),
    "id not an integer": (_set(["steps", 2, "action", "size"], 1.5),
                          r"steps\[2\]\.action\['size'\]=1\.5"),
    "missing id": (_set(["steps", 2, "action", "flag"], KeyError), r"steps\[2\].*missing.*flag"),
    "meaning off its ids": (_set(["steps", 2, "end"], [3.0, 5.0]),
                            r"steps\[2\]\.end=\[3\.0, 5\.0\] does not match"),
    "radius off its ids": (_set(["steps", 1, "radius"], 7), r"steps\[1\]\.radius=7"),
    "stroke field on a move": (_set(["steps", 0, "radius"], 2.0),
                               r"steps\[0\].*\['radius'\].*move"),
    "missing meaning": (_set(["steps", 1, "control"], KeyError), r"steps\[1\] lacks 'control'"),
    "paint flag off its ids": (_set(["steps", 1, "paint"], False), r"steps\[1\]\.paint=False"),
    "too few steps": (lambda d: d["steps"].pop(), r"episode_length - 1 = 7 steps, got 6"),
    "action spec": (_set(["action_spec", "end"], 65), r"action_spec=.*'end': 65"),
    "format": (_set(["format"], "svg"), r"format='svg'"),
    "version": (_set(["version"], 9), r"version=9"),
    "unknown field": (_set(["strokes"], []), r"unknown program fields \['strokes'\]"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_programs_raise_naming_the_bad_value(color_episodes, case):
    data = _good_dict(color_episodes)
    P.from_dict(copy.deepcopy(data))  # the unedited program is fine
    edit, match = BAD[case]
    edit(data)
    with pytest.raises(ValueError, match=match) as err:
        P.from_json(json.dumps(data))
    assert "\n" not in str(err.value)


def test_unreadable_json_and_bad_actions_raise(tmp_path, color_episodes):
    (tmp_path / "program.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"program\.json.*not valid JSON"):
        P.load(tmp_path / "program.json")
    env, actions, _ = color_episodes
    with pytest.raises(ValueError, match=r"actions\['flag'\] has shape \(3,\).*7 steps"):
        P.from_actions(env, {**_episode(actions, 0), "flag": np.ones(3, np.int32)})


# ------------------------------------------------------------------------------------
# SVG.


def render_svg(svg: str) -> np.ndarray:
    """resvg's rendering, float RGB [H, W, 3] in [0, 1], read back through Pillow."""
    png = resvg_py.svg_to_bytes(svg_string=svg)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0


def svg_vs_canvas(svg: np.ndarray, canvas: np.ndarray) -> tuple[float, float]:
    """(MAE, IoU) of `program_svg.compare`, checked against a direct count."""
    score = program_svg.compare(svg, canvas)
    grey = svg.mean(axis=-1, keepdims=True) if canvas.shape[-1] == 1 else svg
    assert score["mae"] == pytest.approx(float(np.abs(grey - canvas).mean()), abs=1e-6)
    return score["mae"], score["iou"]


def test_compare_counts_ink_by_the_darkest_channel():
    white = np.ones((4, 4, 3), np.float32)
    a, b = white.copy(), white.copy()
    a[0, :2] = (1.0, 1.0, 0.2)  # yellow: light, but its blue channel is inked
    b[0, 1:3] = 0.0
    # |a - b| summed: 0.8 at (0, 0), 1 + 1 + 0.2 at (0, 1), 3 at (0, 2); 48 values.
    assert program_svg.compare(a, b) == pytest.approx({"mae": 6.0 / 48, "iou": 1 / 3})
    assert program_svg.compare(white, white[..., :1]) == {"mae": 0.0, "iou": 1.0}
    np.testing.assert_allclose(program_svg.render(program_svg.to_svg(P.Program(
        {**COLOR_ENV}, (), {}))), np.ones((16, 16, 3)))
    with pytest.raises(ValueError, match="differ"):
        program_svg.compare(white, np.ones((5, 5, 1)))


def test_svg_paths_are_the_strokes(color_episodes):
    env, actions, _ = color_episodes
    program = P.from_actions(env, _episode(actions, 0))
    root = ET.fromstring(program_svg.to_svg(program))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("width") == root.get("height") == "16"
    assert root.get("viewBox") == "0 0 16 16"
    rect = root.find(f"{ns}rect")
    assert (rect.get("width"), rect.get("fill")) == ("16", "#ffffff")
    paths = root.findall(f"{ns}path")
    strokes = [(t, s) for t, s in enumerate(program.steps) if s.paint]
    assert len(paths) == len(strokes) > 0  # moves draw nothing
    for path, (t, s) in zip(paths, strokes, strict=True):
        assert path.get("id") == f"step-{t}"
        d = path.get("d").split()
        assert (d[0], d[3]) == ("M", "Q")
        assert [float(x) for x in d[1:3] + d[4:]] == [*s.start, *s.control, *s.end]
        colour = path.get("stroke")
        assert [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)] == pytest.approx(
            s.color, abs=0.5 / 255)
        width, opacity = program_svg.stroke_style(s, COLOR_ENV["dab_budget"])
        assert float(path.get("stroke-width")) == pytest.approx(width, rel=1e-5)
        assert float(path.get("stroke-opacity")) == pytest.approx(opacity, rel=1e-5)
        assert path.get("stroke-linecap") == "round" and path.get("fill") == "none"


def test_brush_band_grows_with_radius_and_pressure():
    widths = [program_svg.brush_cross_section(r, 1.0, 32)[0] for r in (1.0, 2.0)]
    faint, firm = (program_svg.brush_cross_section(2.0, p, 32) for p in (0.1, 1.0))
    assert widths[0] < widths[1] and faint[1] < firm[1]
    # The dab's diameter is the brush's reach; its soft rim thins the visible band.
    assert 1.5 <= widths[0] <= 2.5 and 3.0 <= widths[1] <= 4.5 and firm[1] > 0.9


def test_svg_rendered_by_resvg_matches_the_canvas():
    env, actions, finals = _random_episodes(MNIST5K_ENV, SVG_EPISODES, seed=0)
    scores = np.array([
        svg_vs_canvas(render_svg(program_svg.to_svg(P.from_actions(env, _episode(actions, i)))),
                      finals[i])
        for i in range(SVG_EPISODES)
    ])
    mae, iou = scores[:, 0], scores[:, 1]
    assert mae.mean() < SVG_MAE_MEAN and mae.max() < SVG_MAE_MAX, (mae.mean(), mae.max())
    assert iou.mean() > SVG_IOU_MEAN and iou.min() > SVG_IOU_MIN, (iou.mean(), iou.min())
    # For scale: a blank canvas is ten times as far.
    assert np.abs(1.0 - finals).mean() > 5 * SVG_MAE_MEAN


def test_svg_colours_match_the_canvas(color_episodes):
    env, actions, finals = color_episodes
    for i in range(len(finals)):
        svg = render_svg(program_svg.to_svg(P.from_actions(env, _episode(actions, i))))
        mae, iou = svg_vs_canvas(svg, finals[i])
        assert mae < 0.12 and iou > 0.5, (i, mae, iou)


@pytest.mark.slow
def test_random_programs_replay_to_their_canvases():
    # The episodes `experiments.compare_svg --config=small` measures.
    env = LibMyPaint(**dict(small_config.get_config().env))
    programs, canvases = P.random_programs(env, 3, seed=0)
    assert len(programs) == 3 and programs[0].settings["canvas_width"] == 16
    for p, c in zip(programs, canvases, strict=True):
        np.testing.assert_array_equal(P.replay(p), c)
