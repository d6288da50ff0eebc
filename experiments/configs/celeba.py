r"""python -m experiments.train --config=celeba

CelebA (TFDS), SPIRAL's paper settings: 64x64 colour canvas, grid 32, 19 strokes.
"""

from experiments.configs import common


def get_config():
    c = common.base_config()
    c.dataset = "celeb_a"
    c.env.use_color = True
    return c
