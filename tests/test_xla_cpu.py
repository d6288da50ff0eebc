"""Tests of spiral_jax.xla_cpu: the options it compiles with, and that they change
nothing about what a function computes."""

from __future__ import annotations

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
