r"""python -m experiments.train --config=small

A smoke test that trains a step in seconds on a CPU (the tests use it).
mnist5k on a 16x16 canvas, grid 8, episodes of 5 steps, tiny networks, 8 episodes per
step, 50 steps.
"""

from experiments.configs import mnist5k


def get_config():
    c = mnist5k.get_config()
    c.env.canvas_width = 16
    c.env.grid_width = 8
    c.env.episode_length = 6
    c.env.brush_sizes = (1, 2)
    c.env.dab_budget = 16
    c.agent.channels = 8
    c.agent.num_res_blocks = 1
    c.agent.lstm_size = 32
    c.agent.torso_output = 32
    c.agent.noise_dim = 4
    c.disc.channels = (8, 16)
    c.disc_learner.replay_batches = 4
    c.batch_size = 8
    c.learner.passes = 1
    c.max_examples = 512
    c.num_train_steps = 50
    c.log_every = 1
    c.sample_every = 10
    c.checkpoint_every = 10
    c.eval_every = 0  # tests turn it on where they check it
    return c
