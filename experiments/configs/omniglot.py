r"""python -m experiments.train --config=omniglot

Omniglot (TFDS), SPIRAL's paper settings: 64x64 grayscale canvas, grid 32.
"""

from experiments.configs import common


def get_config():
    c = common.base_config()
    c.dataset = "omniglot"
    return c
