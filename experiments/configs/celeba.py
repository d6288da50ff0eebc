r"""python -m experiments.train --config=celeba

CelebA (TFDS) with the paper's environment and network settings (64x64 colour canvas,
grid 32, 19 strokes; SPIRAL's agent and discriminator), but an unconditional agent: it
paints faces of its own, while the paper's CelebA agents were conditional and
reconstructed target faces. Add `--config.conditional=True` for the paper's conditional
setting (the agent and D see the target).
"""

from experiments.configs import common


def get_config():
    c = common.base_config()
    c.dataset = "celeb_a"
    c.env.use_color = True
    return c
