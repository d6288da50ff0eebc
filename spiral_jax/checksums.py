"""Checksums and finiteness of a train state's leaves, computed on device.

A checkpoint stores, beside the arrays, two 32-bit sums of every leaf's bits; restoring
recomputes them from what was read and refuses a mismatch. The check covers the whole
path (tensorstore's files, orbax's metadata, the restore itself) and works on any
filesystem, any sharding and any number of processes: the sums are computed by XLA
on the (possibly sharded) arrays, in wrapping uint32 arithmetic, whose sums are exact
and do not depend on the order of addition or on the device count.

With word i of a leaf b_i (its bits as uint32), the sums are

    s1 = sum_i b_i * (2 i + 1)          and          s2 = sum_i rotl(b_i, 16) * h(i),

mod 2^32, with h(i) an odd hash of i. Every odd number is invertible mod 2^32, so s1
changes whenever exactly one word changes (a flipped bit, an overwritten value), and s1
and s2 together miss a random multi-word corruption with probability about 2^-64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B1)


def _words(leaf: jax.Array) -> jax.Array:
    """A leaf's bits as a flat uint32 vector (one word per element)."""
    x = jnp.ravel(leaf)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize
    if width == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if width == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    if width == 1:
        return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    raise ValueError(f"no checksum for dtype {x.dtype}")


def _leaf_sums(leaf: jax.Array) -> jax.Array:
    words = _words(leaf)
    i = jnp.arange(words.shape[0], dtype=jnp.uint32)
    s1 = jnp.sum(words * (2 * i + 1), dtype=jnp.uint32)
    rotated = (words << 16) | (words >> 16)
    s2 = jnp.sum(rotated * ((i * _GOLDEN) | 1), dtype=jnp.uint32)
    return jnp.stack([s1, s2])


def _finite(leaf: jax.Array) -> jax.Array:
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(leaf))
    return jnp.array(True)


@jax.jit
def _sums_and_finite(tree: Any) -> tuple[list[jax.Array], list[jax.Array]]:
    leaves = jax.tree.leaves(tree)
    return [_leaf_sums(x) for x in leaves], [_finite(x) for x in leaves]


def _names(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path, simple=True, separator="/")
            for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def inspect(tree: Any) -> tuple[dict[str, str], list[str]]:
    """(checksum of every leaf by its path, as 16 hex digits; paths of the leaves that
    hold a NaN or an infinity)."""
    sums, finite = jax.device_get(_sums_and_finite(tree))
    names = _names(tree)
    checksums = {n: f"{int(s[0]):08x}{int(s[1]):08x}" for n, s in zip(names, sums, strict=True)}
    return checksums, [n for n, ok in zip(names, finite, strict=True) if not ok]


def mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Paths whose checksums differ or that only one side has."""
    return sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
