"""spiral-jax: SPIRAL (Ganin et al., ICML 2018) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="spiral-jax",
    version="0.1.0",
    description="SPIRAL (Ganin et al. 2018) in JAX: painting agents trained adversarially",
    # The library only: experiments/ (command lines, configs) and tools/ (the libmypaint
    # reference) run from a checkout, as `python -m experiments.X` in its root.
    packages=find_packages(include=["spiral_jax", "spiral_jax.*"]),
    package_data={"spiral_jax": ["assets/*.npz"]},  # the evaluation's digit classifier
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.6",
        "chex>=0.1.90",
        "absl-py",
        "ml_collections",
        "orbax-checkpoint>=0.12",
        "tensorflow-datasets>=4.9.9",
        "numpy",
        "pillow",
        "mlxtend",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "etils[epath]",
    ],
)
