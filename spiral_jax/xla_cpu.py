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

The allocator. XLA's CPU runtime allocates each call's temporary buffers (843 MB for
the paper agent's learner at batch 16) with malloc and frees them at the end of the
call. glibc serves blocks that large with fresh mmaps and unmaps them on free, so every
call page-faults its whole working set again (measured in docs/speed.md: ~10-20 % of
the learner's time). `keep_freed_memory` tells glibc (mallopt) to serve them from its
heap and keep freed memory for reuse; the first `jit` on a CPU calls it. A process then
holds on to its peak memory. SPIRAL_JAX_KEEP_FREED_MEMORY=0 leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

# YNNPACK's default fusion types less INDIVIDUAL_CONVOLUTION and REDUCE. (The option
# takes the whole list; the `-name` form of XLA_FLAGS is not accepted per compilation.)
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# -1: never return free memory at the top of the heap to the OS (mallopt(3)).
_NO_TRIM = -1


@functools.cache
def keep_freed_memory() -> bool:
    """On glibc, serves every allocation from malloc's heap (no per-block mmap) and
    keeps freed memory for reuse, so that XLA's per-call temporaries are not faulted in
    afresh on every call. Returns whether it did; off with
    SPIRAL_JAX_KEEP_FREED_MEMORY=0, and a no-op where libc has no mallopt."""
    if os.environ.get("SPIRAL_JAX_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without it)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NO_TRIM))


@functools.cache
def compiler_options() -> dict[str, str]:
    """The XLA options `jit` adds on this process's default backend ({} if none). On a
    CPU it also calls `keep_freed_memory`."""
    if jax.default_backend() != "cpu":
        return {}
    keep_freed_memory()
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
