"""spiral-jax: SPIRAL (Ganin et al., ICML 2018) in JAX/Flax."""

__version__ = "0.1.0"
