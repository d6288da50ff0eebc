r"""python -m experiments.train --config=mnist

MNIST (TFDS), SPIRAL's paper settings: 64x64 grayscale canvas, grid 32, 19 strokes.
"""

from experiments.configs import common


def get_config():
    c = common.base_config()
    c.dataset = "mnist"
    return c
