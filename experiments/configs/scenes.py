r"""python -m experiments.train --config=scenes

3D scenes (docs/scenes.md), the paper's settings, for accelerators: reconstruct a
held-out scene of 1-5 primitives on a 64x64 RGB canvas in 20 actions (add, skip or
modify an object: type, 16x16 cell, size, colour), up to 20 objects. Conditional;
rewarded by a conditional discriminator (WGAN-GP) that sees (target, canvas) pairs,
as in the paper's scene experiment. The paper's L2 reward instead:
--config.reward.kind=l2 (or l2_per_step). The full agent and D, batch 64.
"""

from experiments.configs import common
from spiral_jax.envs.scenes import Scenes
from spiral_jax.experiment import section_defaults


def get_config():
    c = common.base_config()
    c.environment = "scenes"  # Scenes(**c.scene_env) instead of LibMyPaint(**c.env)
    del c.env
    c.scene_env = section_defaults(Scenes)  # 64x64, 20 actions, 20 objects
    c.dataset = "scenes"
    c.conditional = True
    c.reward.kind = "terminal_d"
    return c
