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

`keep_host_memory` is the other half, for the process: XLA maps its temporary buffer
(202 MB for the default config's train step) afresh on every call, and the kernel then
fills each of its pages on first touch, about 15 % of a 2-core CPU's time in that step.
`experiment.build` calls it before the first computation.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
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


# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"


def keep_host_memory() -> bool:
    """On a single-device CPU run: computations run on the calling thread, and glibc
    keeps the memory they free, so that each call reuses the last call's pages.

    Call it before the first computation. Returns whether it applied. Without it, a
    call runs on one of XLA's threads, whose glibc arena maps any chunk over 64 MB
    (its heap size) afresh and unmaps it when freed; the kernel fills the pages on
    every call (the default train step: 49,600 page faults, 84 ms of system time a
    step, about 15 % of the CPU time). On the calling thread the buffer comes from
    glibc's main heap, which `mallopt` stops mapping (M_MMAP_MAX = 0) and trimming
    (M_TRIM_THRESHOLD = -1): a process holds its high-water mark of memory instead.
    JAX runs a computation over several devices asynchronously whatever the setting,
    so only a single device gains. Changes nothing (returns False) when JAX's backends
    are already initialised, when JAX_CPU_ENABLE_ASYNC_DISPATCH is set (the user
    chose), in a run of several processes (`jax.distributed`) or without glibc; on
    another backend or several devices of one process it only makes the CPU client
    synchronous, which they leave unused or ignore (returns False).
    """
    try:  # no public way to ask whether JAX's clients exist
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:
        return False
    if backends_are_initialized():
        logging.info("keep_host_memory: JAX's backends already exist; not applied")
        return False
    if _ASYNC_DISPATCH.upper() in os.environ:
        return False
    if jax.distributed.is_initialized():
        # Several processes: their computations span devices anyway, and a process
        # blocked in a synchronous one could not notice a lost peer in time (JAX's
        # heartbeat aborts it first).
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    jax.config.update(_ASYNC_DISPATCH, False)  # only the CPU client reads it
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
