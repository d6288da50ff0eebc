"""Tests of the on-device canvas replay (spiral_jax.replay) against a Python reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import device_data
from spiral_jax import replay as R

SHAPE = (4, 4, 1)


def _batch(ids: np.ndarray, shape=SHAPE) -> np.ndarray:
    """Canvases whose every pixel is id / 255: each canvas says which it is."""
    ids = np.asarray(ids)
    return np.broadcast_to((ids / 255.0).astype(np.float32)[:, None, None, None],
                           (len(ids),) + shape).copy()


def _ids(canvases) -> np.ndarray:
    return np.rint(np.asarray(canvases)[:, 0, 0, 0] * 255).astype(int)


class RingReference:
    """A plain Python ring buffer: the semantics `replay.add` must reproduce."""

    def __init__(self, capacity: int):
        self.slots: list[int | None] = [None] * capacity
        self.pointer = 0
        self.count = 0

    def add(self, ids):
        for i in ids:
            self.slots[self.pointer] = int(i)
            self.pointer = (self.pointer + 1) % len(self.slots)
            self.count = min(self.count + 1, len(self.slots))


add = jax.jit(R.add)
sample = jax.jit(R.sample, static_argnums=2)


def test_ring_buffer_matches_python_reference():
    capacity = 10
    rep = R.init(capacity, SHAPE)
    ref = RingReference(capacity)
    next_id = 1
    for size in (3, 4, 3, 7, 10, 1, 4, 3):  # wraps several times, incl. a full-size batch
        ids = np.arange(next_id, next_id + size)
        next_id += size
        rep = add(rep, jnp.asarray(_batch(ids)))
        ref.add(ids)
        assert int(rep.pointer) == ref.pointer
        assert int(rep.count) == ref.count
        stored = _ids(device_data.to_float(rep.canvases))
        want = np.array([0 if s is None else s for s in ref.slots])
        np.testing.assert_array_equal(stored, want)
        # take() reads chosen slots, in the order asked.
        idx = np.array([ref.pointer - 1, 0, capacity - 1, 0]) % capacity
        np.testing.assert_array_equal(_ids(R.take(rep, jnp.asarray(idx))[0]), want[idx])
    assert rep.canvases.dtype == jnp.uint8 and rep.capacity == capacity


def test_sampling_is_uniform_over_filled_slots_and_reproducible():
    rep = add(R.init(16, SHAPE), jnp.asarray(_batch(np.arange(1, 6))))  # slots 0..4 filled
    key = jax.random.key(0)
    canvases, targets = sample(rep, key, 5000)
    assert targets is None and canvases.shape == (5000,) + SHAPE
    assert canvases.dtype == jnp.float32
    ids = _ids(canvases)
    assert set(ids) == {1, 2, 3, 4, 5}  # never an empty slot (id 0), every filled one
    counts = np.bincount(ids, minlength=6)[1:]
    # Uniform: each of 5 slots gets 1000 +- 4 sd (sd = sqrt(5000 * 0.2 * 0.8) ~ 28).
    assert np.all(np.abs(counts - 1000) < 4 * 28.3), counts
    chi2 = np.sum((counts - 1000.0) ** 2 / 1000.0)
    assert chi2 < 18.5  # 4 degrees of freedom, p ~ 0.001
    again, _ = sample(rep, key, 5000)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(canvases))
    other, _ = sample(rep, jax.random.key(1), 5000)
    assert not np.array_equal(np.asarray(other), np.asarray(canvases))


def test_full_replay_samples_every_slot_and_only_live_canvases():
    rep = R.init(6, SHAPE)
    for start in (1, 5, 9):  # 12 canvases into 6 slots: ids 7..12 survive
        rep = add(rep, jnp.asarray(_batch(np.arange(start, start + 4))))
    ids = _ids(sample(rep, jax.random.key(2), 3000)[0])
    assert set(ids) == set(range(7, 13))


def test_uint8_storage_is_lossless_for_8bit_canvases():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(8,) + SHAPE, dtype=np.uint8)
    canvases = codes.astype(np.float32) / np.float32(255.0)
    # A canvas computed another way may be one ulp off k / 255: still stored exactly.
    nudged = np.nextafter(canvases, np.float32(2.0))
    rep = add(R.init(8, SHAPE), jnp.asarray(nudged))
    np.testing.assert_array_equal(np.asarray(rep.canvases), codes)
    idx = np.asarray(R.sample_indices(rep, jax.random.key(0), 20))
    out, _ = sample(rep, jax.random.key(0), 20)
    np.testing.assert_array_equal(np.asarray(out), canvases[idx])  # exactly k / 255
    # float32 storage keeps arbitrary values as they are.
    values = rng.uniform(size=(8,) + SHAPE).astype(np.float32)
    rep32 = add(R.init(8, SHAPE, dtype=jnp.float32), jnp.asarray(values))
    out32, _ = sample(rep32, jax.random.key(0), 20)
    np.testing.assert_array_equal(np.asarray(out32), values[idx])


def test_conditional_targets_travel_with_their_canvases():
    rep = R.init(5, SHAPE, conditional=True)
    for start in (1, 4, 7):
        ids = np.arange(start, start + 3)
        rep = add(rep, jnp.asarray(_batch(ids)), jnp.asarray(_batch(ids + 100)))
    canvases, targets = sample(rep, jax.random.key(3), 500)
    c, t = _ids(canvases), _ids(targets)
    np.testing.assert_array_equal(t, c + 100)
    assert set(c) == {5, 6, 7, 8, 9}


def test_add_and_sample_inside_scan():
    """Pure functions of the state: a lax.scan of adds equals the Python loop."""
    batches = jnp.asarray(np.stack([_batch(np.arange(3 * i + 1, 3 * i + 4)) for i in range(5)]))

    def body(rep, batch):
        return R.add(rep, batch), None

    rep, _ = jax.jit(lambda r, b: jax.lax.scan(body, r, b))(R.init(7, SHAPE), batches)
    loop = R.init(7, SHAPE)
    for b in batches:
        loop = add(loop, b)
    for a, b in zip(jax.tree_util.tree_leaves(rep), jax.tree_util.tree_leaves(loop), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_memory_bytes():
    # SPIRAL: 20 batches of 64 canvases of 64x64x3.
    assert R.memory_bytes(20 * 64, (64, 64, 3)) == 15_728_640
    assert R.memory_bytes(20 * 64, (64, 64, 3), dtype=jnp.float32) == 62_914_560
    assert R.memory_bytes(20 * 64, (64, 64, 3), conditional=True) == 31_457_280
    rep = R.init(20 * 4, (8, 8, 3), conditional=True)
    assert R.memory_bytes(80, (8, 8, 3), conditional=True) == rep.canvases.nbytes * 2


def test_bad_input():
    with pytest.raises(ValueError, match="capacity"):
        R.init(0, SHAPE)
    with pytest.raises(ValueError, match="canvas_shape"):
        R.init(4, (4, 4))
    with pytest.raises(ValueError, match="dtype"):
        R.init(4, SHAPE, dtype=jnp.float16)
    rep = R.init(4, SHAPE)
    with pytest.raises(ValueError, match="between 1 and capacity 4"):
        R.add(rep, jnp.zeros((5,) + SHAPE))
    with pytest.raises(ValueError, match=r"canvases must be \[B, 4, 4, 1\]"):
        R.add(rep, jnp.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="unconditional"):
        R.add(rep, jnp.zeros((2,) + SHAPE), jnp.zeros((2,) + SHAPE))
    with pytest.raises(ValueError, match="needs targets"):
        R.add(R.init(4, SHAPE, conditional=True), jnp.zeros((2,) + SHAPE))
    with pytest.raises(ValueError, match="batch_size"):
        R.sample(rep, jax.random.key(0), 0)


_SHARD_MAP_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from spiral_jax import replay as R
    mesh = Mesh(np.array(jax.devices()), ("data",))
    cap, b = 6, 4

    # Each device: its own replay of its own canvases; pointer and count replicated.
    init = lambda: R.init(cap, (2, 2, 1))
    specs = R.Replay(canvases=P("data"), targets=None, pointer=P(), count=P())

    def step(rep, batch, key):
        rep = R.add(rep, batch)
        k = jax.random.fold_in(key, jax.lax.axis_index("data"))
        return rep, R.sample(rep, k, 50)[0]

    f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(specs, P("data"), P()),
                              out_specs=(specs, P("data"))))
    # The global view: the two devices' buffers stacked on the capacity axis.
    glob = init().replace(canvases=jnp.zeros((2 * cap, 2, 2, 1), jnp.uint8))
    for i in range(3):
        # device 0 paints ids 1..12, device 1 ids 101..112
        ids = np.concatenate([np.arange(1, 5) + 4 * i, np.arange(101, 105) + 4 * i])
        batch = np.broadcast_to((ids / 255.0).astype(np.float32)[:, None, None, None],
                                (2 * b, 2, 2, 1))
        glob, out = f(glob, jnp.asarray(batch), jax.random.key(i))
    assert int(glob.count) == cap and int(glob.pointer) == (3 * b) % cap, (glob.count,
                                                                          glob.pointer)
    got = np.rint(np.asarray(out)[:, 0, 0, 0] * 255).astype(int)
    assert set(got[:50]) <= set(range(7, 13)), got[:50]      # device 0's latest 6
    assert set(got[50:]) <= set(range(107, 113)), got[50:]   # device 1's latest 6
    # Same as running each device's replay alone.
    single = R.init(cap, (2, 2, 1))
    for i in range(3):
        ids = np.arange(101, 105) + 4 * i
        single = R.add(single, jnp.asarray(np.broadcast_to(
            (ids / 255.0).astype(np.float32)[:, None, None, None], (b, 2, 2, 1))))
    np.testing.assert_array_equal(np.asarray(glob.canvases)[cap:], np.asarray(single.canvases))
    print("SHARD_MAP_OK")
""")


def test_per_device_replay_inside_shard_map():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARD_MAP_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "SHARD_MAP_OK" in proc.stdout, proc.stdout + proc.stderr
