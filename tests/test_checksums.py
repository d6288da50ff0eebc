"""On-device checksums of a state's leaves (`spiral_jax.checksums`) against a numpy
reference of the same sums, and what they catch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import checksums


def _reference(leaf: np.ndarray) -> str:
    """The two sums in Python integers, reduced mod 2^32 at the end."""
    x = np.ascontiguousarray(leaf).reshape(-1)
    if x.dtype == np.bool_:
        words = x.astype(np.uint64)
    else:
        view = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
        words = x.view(view).astype(np.uint64)
    i = np.arange(words.size, dtype=np.uint64)
    s1 = int(np.sum((words * (2 * i + 1)) % 2**32, dtype=np.uint64)) % 2**32
    rotated = ((words << 16) | (words >> 16)) % 2**32
    weights = ((i * 0x9E3779B1) % 2**32) | 1
    s2 = int(np.sum((rotated * weights) % 2**32, dtype=np.uint64)) % 2**32
    return f"{s1:08x}{s2:08x}"


def _tree(rng):
    return {
        "w": rng.standard_normal((5, 7)).astype(np.float32),
        "b16": rng.standard_normal(9).astype(jnp.bfloat16),
        "count": np.array(12345, np.int32),
        "canvas": rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8),
        "flag": np.array([True, False, True]),
    }


def test_checksums_equal_the_numpy_reference_for_every_dtype():
    tree = _tree(np.random.default_rng(0))
    sums, nonfinite = checksums.inspect(jax_tree := {k: jnp.asarray(v) for k, v in tree.items()})
    assert nonfinite == [] and set(sums) == set(jax_tree)
    for name, leaf in tree.items():
        assert sums[name] == _reference(np.asarray(leaf)), name


@pytest.mark.parametrize("where", [0, 17, 34])
def test_any_single_changed_word_changes_the_checksum(where):
    tree = _tree(np.random.default_rng(1))
    before, _ = checksums.inspect(tree)
    w = tree["w"].copy().reshape(-1)
    w[where] = np.nextafter(w[where], np.float32(np.inf))  # one ulp: the smallest change
    after, _ = checksums.inspect({**tree, "w": w.reshape(5, 7)})
    assert checksums.mismatches(before, after) == ["w"]


def test_swapped_values_and_non_finite_leaves_are_caught():
    tree = _tree(np.random.default_rng(2))
    before, _ = checksums.inspect(tree)
    swapped = tree["w"].copy()
    swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]
    after, _ = checksums.inspect({**tree, "w": swapped})
    assert checksums.mismatches(before, after) == ["w"]
    bad = tree["w"].copy()
    bad[2, 3] = np.nan
    _, nonfinite = checksums.inspect({**tree, "w": bad, "b16": tree["b16"] * np.inf})
    assert nonfinite == ["b16", "w"]
