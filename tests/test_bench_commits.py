"""experiments.bench_commits: steps of two trees' train steps taken in turn, and a
revision git does not know."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import bench_commits

_ROOT = Path(bench_commits.__file__).resolve().parents[1]


def test_an_unknown_revision_is_named(tmp_path):
    with pytest.raises(SystemExit, match="--old='no-such-revision-x'"):
        bench_commits.export_commit("no-such-revision-x", tmp_path)


def test_median_frames_per_second():
    assert bench_commits.median_fps(100, [0.5, 0.25, 1.0]) == 200.0


@pytest.mark.slow
def test_two_processes_take_steps_in_turn():
    runs = bench_commits.compare({"a": _ROOT, "b": _ROOT}, "small", steps=2, paper_batch=16)
    assert set(runs) == {"a", "b"}
    for frames, seconds in runs.values():
        assert frames > 0 and len(seconds) == 2 and all(s > 0 for s in seconds)


def test_a_failing_child_reports_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="failed"):
        bench_commits.compare({"empty": tmp_path}, "small", steps=1, paper_batch=16)


def test_environment_settings_are_parsed_and_reach_only_their_process(tmp_path):
    assert bench_commits.parse_env(["GLIBC_TUNABLES=glibc.malloc.hugetlb=1", "A_1="]) == {
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "A_1": ""}
    for bad in ["NOVALUE", "=1", "1A=2"]:
        with pytest.raises(SystemExit, match=f"--new_env='{bad}': must be NAME=VALUE"):
            bench_commits.parse_env([bad])
    # Python names a warning category it does not know on stderr at start-up, which the
    # failing child's error then shows.
    with pytest.raises(RuntimeError, match="NoSuchCategory"):
        bench_commits.compare({"empty": tmp_path}, "small", steps=1, paper_batch=16,
                              envs={"empty": {"PYTHONWARNINGS": "error::NoSuchCategory"}})
