"""experiments.bench_torch's cost of a call (needs PyTorch, which CI does not install)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from experiments import bench_torch  # noqa: E402


def test_a_call_that_touches_fresh_memory_counts_its_page_faults():
    size = 64 * 2**20  # above glibc's largest mmap threshold: mapped afresh each call

    def touch() -> None:
        b"\x01" * size  # malloc'd and written (numpy would ask for huge pages)

    faults, system = bench_torch.call_cost(touch)
    assert faults >= 0.9 * size / 4096
    assert system >= 0.0
    idle_faults, _ = bench_torch.call_cost(lambda: None)
    assert idle_faults < 0.1 * size / 4096
