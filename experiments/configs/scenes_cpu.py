r"""python -m experiments.train --config=scenes_cpu --max_minutes=30

3D scenes on a CPU: the `scenes` task (conditional, 16x16 grid, 4 types, 3 sizes, 64
colours, add / skip / modify) on a 32x32 canvas with 5 actions and 5 object slots (the
targets hold 1-5 objects), mnist5k's small agent, batch 32. Rewarded by per-step L2
averaged over average-pooled scales 4, 8, 16 and 32, scaled by 100 (at full resolution
even an object in the right cell but of random type, size and colour costs, and the
agent learns to add nothing: docs/scenes.md). D is not trained. Conditional-D reward:
--config.reward.kind=terminal_d --config.disc_learner.updates_per_step=1
"""

from experiments.configs import common
from spiral_jax.envs.scenes import Scenes
from spiral_jax.experiment import section_defaults


def get_config():
    c = common.base_config()
    c.environment = "scenes"  # Scenes(**c.scene_env) instead of LibMyPaint(**c.env)
    del c.env
    c.scene_env = section_defaults(Scenes)
    c.scene_env.canvas_width = 32
    c.scene_env.episode_length = 6
    c.scene_env.max_objects = 5
    c.dataset = "scenes"
    c.conditional = True
    c.agent.channels = 16
    c.agent.num_res_blocks = 2
    c.disc.channels = (16, 32, 64)
    c.disc_learner.updates_per_step = 0  # L2 pays: no D to train
    c.reward.kind = "l2_per_step"
    c.reward.discount = 0.9
    c.reward.l2_pools = (4, 8, 16, 32)
    c.reward.scale = 100.0
    c.learner.learning_rate = 3e-4
    c.learner.entropy_cost = 0.02
    c.learner.normalize_entropy = True
    c.learner.ema_decay = 0.995
    c.learner.passes = 2
    c.batch_size = 32
    c.num_train_steps = 20_000
    c.log_every = 5
    c.sample_every = 100
    c.checkpoint_every = 100
    return c
