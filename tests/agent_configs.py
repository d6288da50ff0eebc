"""Agent sizes the tests share (the library keeps no presets: configs live in
experiments/configs)."""

from spiral_jax.agent import AgentConfig

# Small enough for a CPU, with every MLP and embedding width differing from the paper's
# so that a swapped width shows up as a shape error.
SMALL = AgentConfig(
    channels=16,
    num_res_blocks=2,
    lstm_size=64,
    torso_output=64,
    cond_hidden=(32, 16),
    noise_hidden=(32, 16),
    embed_dim=16,
    residual_hidden=(16, 32),
)
