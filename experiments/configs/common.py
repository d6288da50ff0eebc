"""SPIRAL's paper settings (Ganin et al. 2018, App. B), which every config starts from.

Each section holds every keyword of the constructor it goes to (`spiral_jax.experiment`
lists them; the constructors say what each field means); the top-level fields are here.
"""

from __future__ import annotations

import ml_collections

from spiral_jax.agent import AgentConfig
from spiral_jax.disc_learner import DiscLearnerConfig
from spiral_jax.discriminator import DiscriminatorConfig
from spiral_jax.envs.libmypaint import LibMyPaint
from spiral_jax.experiment import section_defaults
from spiral_jax.policy_learner import LearnerConfig
from spiral_jax.population import PopulationConfig
from spiral_jax.rewards import RewardConfig


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameters, and step t's randomness: fold_in(PRNGKey(seed), t)
    c.dataset = "mnist5k"  # mnist5k | mnist | omniglot | celeb_a | folder (your images)
    # TFDS data_dir of prepared data ("" = TFDS's default); for dataset=folder, the
    # folder of PNG/JPEG images (its train/ and test/ subfolders, if any, are the splits)
    c.data_dir = ""
    c.invert_images = False  # dataset=folder: light ink on a dark ground; invert it
    c.max_examples = 0  # training images kept; 0 = the whole split
    c.conditional = False  # agent and D see a target image (conditional agents)
    c.compute_dtype = "float32"  # networks' compute dtype: float32 | bfloat16
    c.batch_size = 64  # episodes per train step, over all devices
    c.num_train_steps = 100_000
    c.multihost = False  # call jax.distributed.initialize() (TPU pods, multi-node GPU)

    c.log_every = 10  # steps between metrics records
    c.sample_every = 200  # steps between sample grids in <workdir>/samples
    c.checkpoint_every = 500  # steps between checkpoints
    c.keep_checkpoints = 3  # latest checkpoints kept (>= 1)
    # Updates with non-finite gradients are skipped (and counted in the metrics); this
    # many in a row (policy or critic) stop the run, keeping the last good checkpoint.
    c.max_nonfinite_in_a_row = 10
    # Every eval_every steps (0 = never), the Fréchet distance between eval_episodes
    # paintings and as many training digits (unconditional digit runs; ignored
    # elsewhere); the checkpoint with the lowest is kept in best_checkpoints/.
    c.eval_every = 0
    c.eval_episodes = 500

    c.env = section_defaults(LibMyPaint)  # SPIRAL's libmypaint environment
    c.env.use_color = False  # grayscale datasets; celeba turns it on
    c.agent = section_defaults(AgentConfig)  # SPIRAL's agent network
    c.disc = section_defaults(DiscriminatorConfig)  # the DCGAN-style discriminator
    c.disc_learner = section_defaults(DiscLearnerConfig)  # D's loss, optimiser, replay
    c.reward = section_defaults(RewardConfig)  # what the agent is paid
    c.learner = section_defaults(LearnerConfig)  # the policy's V-trace learner
    c.population = section_defaults(PopulationConfig)  # members trained together, PBT
    return c
