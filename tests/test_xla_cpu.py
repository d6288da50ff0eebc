"""Tests of spiral_jax.xla_cpu: the options it compiles with, that they change
nothing about what a function computes, and that `keep_host_memory` stops the page
faults of XLA's temporary buffer."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral_jax import layers, xla_cpu


def test_cpu_options_leave_convolutions_to_xla():
    """On a CPU with this jaxlib, the options keep YNNPACK for dots only, and a compiled
    convolution is then XLA's, not a YNNPACK fusion."""
    if jax.default_backend() != "cpu":
        pytest.skip("XLA CPU options")
    options = xla_cpu.compiler_options()
    assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    x, w = jnp.ones((8, 32, 32, 32)), jnp.ones((4, 4, 32, 32))
    for jit, ynn in ((jax.jit, True), (xla_cpu.jit, False)):
        hlo = jit(layers.conv_4x4_s2).lower(x, w).compile().as_text()
        assert ("__ynn_fusion" in hlo) == ynn
        assert (" convolution(" in hlo[hlo.index("ENTRY") :]) != ynn  # XLA's own conv


def test_jit_computes_what_jax_jit_does_and_passes_its_arguments():
    """Same values and gradients as jax.jit for the agent's convolutions; static
    arguments and donation pass through; explicit compiler options win."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 16, 16, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, 8, 8)) / 12, jnp.float32)

    def loss(x, w, scale):
        return scale * jnp.sum(jnp.tanh(layers.conv_4x4_s2(x, w)) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    ours = xla_cpu.jit(grad, static_argnums=2)(x, w, 2.0)
    ref = jax.jit(grad, static_argnums=2)(x, w, 2.0)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = xla_cpu.jit(lambda x: x + 1, compiler_options={
        "xla_cpu_experimental_ynn_fusion_type": ""})
    np.testing.assert_array_equal(plain(jnp.arange(3.0)), [1.0, 2.0, 3.0])


# A fresh process (keep_host_memory must come before JAX's backends): a function with a
# 128 MB temporary buffer, called twice, then the median of 5 calls' minor page faults.
_FAULTS = r"""
import json, resource, sys
import jax, jax.numpy as jnp
from spiral_jax import xla_cpu
applied = xla_cpu.keep_host_memory() if sys.argv[1] == "keep" else None
f = xla_cpu.jit(lambda x: jnp.max(jnp.cumsum(x * x, axis=0), axis=0))
x = jnp.ones((2048, 8192))
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
for _ in range(2):
    f(x).block_until_ready()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "temp_pages": temp / 4096,
                  "faults": sorted(faults)[2]}))
"""


def _faults(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "JAX_CPU_ENABLE_ASYNC_DISPATCH"}
    # One device: the setting leaves computations over several alone.
    base["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                 if "xla_force_host_platform_device_count" not in f)
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         env={**base, **env}, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator")
def test_keep_host_memory_stops_the_temporary_buffers_page_faults():
    """Without it, every call faults in its whole 128 MB temporary buffer; with it, the
    calls reuse the pages; with JAX_CPU_ENABLE_ASYNC_DISPATCH set it leaves the
    process alone."""
    if jax.default_backend() != "cpu":
        pytest.skip("a CPU setting")
    plain = _faults("plain")
    assert plain["temp_pages"] >= 32_000
    assert plain["faults"] > 0.9 * plain["temp_pages"]
    kept = _faults("keep")
    assert kept["applied"] is True
    assert kept["faults"] < 0.01 * kept["temp_pages"]
    chosen = _faults("keep", JAX_CPU_ENABLE_ASYNC_DISPATCH="true")
    assert chosen["applied"] is False
    assert chosen["faults"] > 0.9 * chosen["temp_pages"]


def test_keep_host_memory_refuses_once_backends_exist():
    jax.devices()
    assert xla_cpu.keep_host_memory() is False
