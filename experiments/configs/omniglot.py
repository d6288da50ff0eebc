r"""Omniglot (TFDS), SPIRAL's paper settings: 64x64 grayscale canvas, grid 32.

    python -m experiments.train --config=omniglot --workdir=runs/omniglot
"""

from experiments.configs import common


def get_config():
    c = common.base_config()
    c.dataset = "omniglot"
    return c
