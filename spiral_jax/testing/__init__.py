"""Test-only helpers: references that the pure-JAX code is checked against.

Nothing in the training path imports this package. `native_libmypaint` drives the real
libmypaint through ctypes and is optional: `native_libmypaint.available()` says whether
the shared library and the brush file are installed.
"""
