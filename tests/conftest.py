"""Test-session settings.

JAX's persistent compilation cache, in a directory of this session only: tests that
build the same train step or sampler (most use the `small` config) compile it once.
On a 2-core CPU a train step compiles in tens of seconds; a cache hit takes a few. It
is set here, at import, so that it is on before any test module compiles anything.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import jax

_CACHE_DIR = tempfile.mkdtemp(prefix="spiral_jax_test_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
