"""Defaults shared by every training config; each config file overrides what differs.

A config is an `ml_collections.ConfigDict` returned by `get_config()` (big_vision
style) and can be overridden from the command line with `--config.FIELD=VALUE`.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """SPIRAL's paper settings (Ganin et al. 2018, App. B) for a 64x64 canvas."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "mnist5k"  # mnist5k | mnist | omniglot | celeb_a
    c.data_dir = ""  # TFDS data_dir; "" = TFDS's default
    c.max_examples = 0  # 0 = the whole split
    c.conditional = False  # agent and D see a target image

    c.env = ml_collections.ConfigDict()
    c.env.episode_length = 20  # reset + 19 strokes
    c.env.canvas_width = 64
    c.env.grid_width = 32
    c.env.brush_sizes = (1, 2, 4, 8, 12, 24)
    c.env.use_color = False
    c.env.use_pressure = True
    c.env.brush_jitter = True
    c.env.dab_budget = 64

    c.agent = ml_collections.ConfigDict()
    c.agent.channels = 32
    c.agent.num_res_blocks = 8
    c.agent.lstm_size = 256
    c.agent.torso_output = 256
    c.agent.noise_dim = 10

    c.disc = ml_collections.ConfigDict()
    c.disc.loss = "wgan_gp"  # wgan_gp (SPIRAL) | gan (SPIRAL++: spectral norm + GAN loss)
    c.disc.widths = (64, 128, 256, 512)
    c.disc.gp_weight = 1.0
    c.disc.learning_rate = 1e-4
    c.disc.b1 = 0.5
    c.disc.b2 = 0.999
    c.disc.eps = 1e-8
    c.disc.updates_per_step = 1  # D updates per train step (its own rate)
    c.disc.replay_batches = 20  # batches of generated canvases kept for D's fake side

    c.reward = ml_collections.ConfigDict()
    c.reward.kind = "terminal_d"  # terminal_d (SPIRAL) | per_step_d (SPIRAL++) | l2 | l2_per_step
    c.reward.discount = 1.0  # SPIRAL: 1; SPIRAL++ per-step rewards: 0.9-0.99
    c.reward.l2_pools = (1,)  # L2 rewards: average over these pooling factors
    c.reward.scale = 1.0  # multiplies the D or L2 reward (not the penalties)
    # Standardise D's scores over the batch (D rewards only; L2 rewards ignore it, so
    # that `--config.reward.kind=l2` works on top of a config that sets it).
    c.reward.standardize_d = False
    c.reward.stroke_penalty = 0.0  # per paint step (SPIRAL's MNIST runs)
    c.reward.empty_penalty = 0.0  # for an empty final canvas

    c.learner = ml_collections.ConfigDict()
    c.learner.learning_rate = 1e-4
    c.learner.b1 = 0.5
    c.learner.b2 = 0.999
    c.learner.eps = 1e-8
    c.learner.entropy_cost = 0.01
    # Divide each action part's entropy by its largest value, log(choices), so that a
    # 2-way flag and a 256-way location weigh the same in the entropy bonus.
    c.learner.normalize_entropy = False
    c.learner.baseline_cost = 0.5
    c.learner.max_grad_norm = 40.0
    # Keep an exponential moving average of the policy's parameters with this decay,
    # and sample, evaluate and pick the best checkpoint with it (0 = none): averaging
    # damps a generator's oscillation in adversarial games (Yazici et al., 2019).
    c.learner.ema_decay = 0.0
    c.learner.passes = 1  # policy updates per rollout (V-trace corrects the lag)
    c.learner.clip_rho_threshold = 1.0
    c.learner.clip_pg_rho_threshold = 1.0
    c.learner.vtrace_lambda = 1.0

    c.batch_size = 64  # episodes per train step, over all devices
    c.num_train_steps = 100_000
    c.compute_dtype = "float32"  # float32 | bfloat16 (networks; params stay float32)
    c.multihost = False  # call jax.distributed.initialize()

    c.log_every = 10
    c.sample_every = 200
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    # Every eval_every steps (0 = never), the Fréchet distance between eval_episodes
    # paintings and as many *training* digits on the digit classifier's features
    # (unconditional digit runs, ignored elsewhere; `experiments.evaluate` uses
    # held-out digits). The checkpoint with the lowest is kept in best_checkpoints/.
    c.eval_every = 0
    c.eval_episodes = 500
    return c
