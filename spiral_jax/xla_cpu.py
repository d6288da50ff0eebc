"""How spiral-jax compiles its programs: `jit`, which is `jax.jit` plus XLA options that
suit this project's network on a CPU.

JAX 0.10's CPU backend hands dots, reductions and convolutions to YNNPACK
(`xla_cpu_experimental_ynn_fusion_type` lists INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION
and REDUCE by default). For the agent's convolutions, whose learner batches fold time
into the batch (19 x 16 frames of 64x64x32 for the paper's agent), YNNPACK's weight
gradients run about 4x slower than XLA's own convolutions, and its forward 4x4
stride-2 convolution 1.6x slower (only the 5-channel 5x5 one is faster with it): the
paper agent's learner (unroll forward and
backward) takes 1.4-1.9x as long with them (measured in docs/speed.md). Its reductions
over the batch (the gradients of values broadcast over it) are slower than XLA's too
(the learner 11 % slower with them). `jit` keeps YNNPACK for dots only.

The options apply only to what spiral-jax compiles itself; on other backends, with a
jaxlib that does not know the option (checked once, by compiling a trivial function),
or when XLA_FLAGS sets it, `jit` is plain `jax.jit`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

# YNNPACK's default fusion types less INDIVIDUAL_CONVOLUTION and REDUCE. (The option
# takes the whole list; the `-name` form of XLA_FLAGS is not accepted per compilation.)
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """The XLA options `jit` adds on this process's default backend ({} if none)."""
    if jax.default_backend() != "cpu":
        return {}
    if any(name in os.environ.get("XLA_FLAGS", "") for name in _CPU_OPTIONS):
        return {}  # the user chose: XLA_FLAGS wins
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(1.0).compile()
    except Exception as e:  # an older or newer jaxlib without the option
        logging.warning("XLA CPU options not used (%s): %s", _CPU_OPTIONS, e)
        return {}
    return dict(_CPU_OPTIONS)


def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
    """`jax.jit(fun, **kwargs)` with `compiler_options()` added (kwargs win)."""
    options = {**compiler_options(), **kwargs.pop("compiler_options", {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)
