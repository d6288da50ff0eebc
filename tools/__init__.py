"""Repository tools that are not part of the installed `spiral_jax` package.

`native_libmypaint` drives the real libmypaint through ctypes with SPIRAL's environment
semantics: the reference the pure-JAX renderer is tested and benchmarked against, and
the renderer of the fixtures in `tests/fixtures`; it needs Debian's libmypaint-1.5-1 and
mypaint-brushes, and `native_libmypaint.available()` says whether they are installed.
`libmypaint_episodes` draws the fixtures' actions. Import them from the repository root
(`python -m experiments.X`, pytest), where this folder is on the path.
"""
