"""SPIRAL's default agent (Ganin et al., ICML 2018, arXiv:1804.01118) in Flax linen.

A layer-by-layer rebuild of deepmind/spiral's `spiral/agents/default.py` and
`spiral/agents/utils.py` (TF1 / Sonnet 1), plus three extensions: a conditional input
(the target image beside the canvas), configurable sizes, so that a small variant
trains on a CPU, and optional U-Net skips from the torso's encoder into the location
decoders. `AgentConfig()`, the default, reproduces SPIRAL's network.

Layers, for a canvas of width W and an action grid of width G (paper: W=64, G=32;
`c` = `AgentConfig.channels`, 32 in the paper; `r` = `num_res_blocks`, 8; `h` =
`lstm_size`, 256; the MLP widths and the embedding width 16 are `AgentConfig` fields
too). The paper-sized agent for SPIRAL's 64x64 colour environment (grid 32, pressure,
six brush sizes) has 1,613,329 parameters::

  Torso
    input      canvas [W, W, C] (+ target [W, W, C] if conditional)
               + x, y coordinate channels (linspace(-1, 1) along width / height)
    conv       5x5, c, stride 1 (no activation)
    condition  for every action part k in spec order: Linear(16) of the previous
               action, times the part's mask from the observation (bias included);
               location parts from (y, x) scaled to [-1, 1] by /(G - 1), others
               one-hot. Concatenate -> MLP[64, 32, c]
               + MLP[64, 32, c] of the episode's noise (10-d N(0, 1))
               added to every pixel of the conv output, then ReLU
  Encoder      (log2(W / 8) stride-2 stages: 64 -> 32 -> 16 -> 8 for W = 64)
    conv       4x4, c, stride 2, ReLU              (repeated log2(W / 8) times)
    conv       3x3, c (no activation)
    res block  ReLU -> 3x3 conv c -> ReLU -> 1x1 conv c, added   (r blocks)
    ReLU
    flatten (8 * 8 * c) -> ReLU -> Linear(`torso_output`, 256)
  Core         LSTM(h): gates i, j, f, o from one matrix over concat(x, h_prev);
               forget-gate bias +1; zero state at episode starts (step_type FIRST)
  Heads        autoregressive, in the order flag, end, control, size, pressure, red,
               green, blue (parts absent from the action spec are skipped; a scene
               action: operation, position, shape, size, red, green, blue, see
               `spiral_jax.action_space`); z = LSTM out
    location   (end, control, a scene's position; each its own decoder): reshape z
               to 4 x 4 x (h / 16)
               -> 3x3 conv c -> r res blocks -> ReLU
               -> log2(G / 4) transposed convs 4x4, c, stride 2, ReLU
                  (4 -> 8 -> 16 -> 32 for G = 32; 2 stages for G = 16, 1 for G = 8)
                  [`decoder_skips` = s > 0, not in SPIRAL: as in a U-Net, stage i < s
                  adds a 1x1 conv c of the encoder's map of its size before its ReLU:
                  the encoder's ReLU'd 8x8 output, then the stride-2 convs' outputs,
                  16x16, 32x32, ...]
               -> 3x3 conv to 1 channel -> flatten to G^2 logits, index y * G + x
    other      Linear(number of choices)
    feedback   after sampling part k: e = Linear(16)(action features of k);
               z = ReLU(z + MLP[16, 32, h](concat(z, e)))
  Baseline     Linear(1) of the LSTM output (not of the autoregressively updated z)

MLPs put a ReLU between layers and none after the last. Convolutions use SAME
padding. Initialisers follow Sonnet 1: weights truncated normal (cut at 2 sd) with
sd 1/sqrt(fan_in), fan_in = kh * kw * C_in for (transposed) convs, biases zero; the
LSTM's weight and bias truncated normal with sd 1/sqrt(input + hidden).

Canvas widths must be 8 * 2^k and grid widths 4 * 2^k, as in SPIRAL, whose encoder
and decoder derive their number of stride-2 stages from W / 8 and G / 4 (a 16-wide
grid starts its decoder at 4x4 and upsamples twice, an 8-wide grid once, a 4-wide
grid not at all).

The layers are in `spiral_jax.layers` (its stride-2 convolutions are arranged for
XLA's CPU backend), the action masks and distributions in `spiral_jax.action_space`:
log-probs and entropies count only the parts the action's own `flag` makes count.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spiral_jax import layers
from spiral_jax.action_space import (
    LOCATION_PARTS,
    ActionSpec,
    action_features,
    canonical_action_spec,
    grid_width_of,
    head_order,
    masked_entropies,
    masked_log_probs,
    masks_of,
    zero_action,
)
from spiral_jax.layers import LSTMState, dense, log2_stages
from spiral_jax.types import FIRST, Array, check_compute_dtype, is_int


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Sizes of the agent; the defaults are SPIRAL's network. `config.agent` holds these
    fields (`conditional` and `dtype` come from the run's top-level fields)."""

    channels: int = 32  # torso conv, encoder, decoders, residual blocks; cond. MLP outputs
    num_res_blocks: int = 8  # residual blocks in the encoder and in each location decoder
    lstm_size: int = 256  # LSTM width = width of z in the heads; a multiple of 16 (4x4xC)
    torso_output: int = 256  # the Linear between the encoder and the LSTM
    cond_hidden: tuple[int, ...] = (64, 32)  # hidden widths of the previous-action MLP
    noise_hidden: tuple[int, ...] = (64, 32)  # hidden widths of the noise MLP
    embed_dim: int = 16  # width of every action embedding
    residual_hidden: tuple[int, ...] = (16, 32)  # hidden widths of the heads' residual MLPs
    noise_dim: int = 10  # per-episode N(0, 1) noise of unconditional agents; 0 = none
    decoder_skips: int = 0  # U-Net skips from the encoder into location decoders (not SPIRAL)
    conditional: bool = False  # also sees a target image (conditional agents get no noise)
    dtype: str = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32

    def __post_init__(self) -> None:
        for name in ("cond_hidden", "noise_hidden", "residual_hidden"):  # JSON gives lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def episode_noise_dim(self) -> int:
        """Size of the noise the agent is fed: noise_dim, or 0 when conditional."""
        return 0 if self.conditional else self.noise_dim

    def validate(self) -> None:
        """Raises ValueError for sizes the network cannot be built with."""
        for name in ("channels", "lstm_size", "torso_output", "embed_dim"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"agent.{name}={value!r}: must be a positive int")
        for name in ("num_res_blocks", "noise_dim", "decoder_skips"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"agent.{name}={value!r}: must be an int >= 0")
        if self.lstm_size % 16:
            raise ValueError(
                f"agent.lstm_size={self.lstm_size}: must be a multiple of 16 (z is reshaped "
                f"to 4x4xC)"
            )
        if not isinstance(self.conditional, bool):
            raise ValueError(f"agent.conditional={self.conditional!r}: must be a bool")
        check_compute_dtype(self.dtype, "agent.dtype")
        for name in ("cond_hidden", "noise_hidden", "residual_hidden"):
            widths = getattr(self, name)
            if not isinstance(widths, tuple) or not all(is_int(w) and w >= 1 for w in widths):
                raise ValueError(f"agent.{name}={widths!r}: must be a tuple of positive ints")


class AgentState(struct.PyTreeNode):
    """What the agent carries from one step to the next (SPIRAL's `AgentState`)."""

    lstm: LSTMState
    prev_action: dict[str, Array]  # name -> int32 [B]


class AgentOutput(struct.PyTreeNode):
    """One step's output (SPIRAL's `AgentOutput`), batch-major [B, ...]."""

    action: dict[str, Array]  # name -> int32 [B]
    logits: dict[str, Array]  # name -> float32 [B, num_choices]
    baseline: Array  # float32 [B]


class UnrollOutput(struct.PyTreeNode):
    """Re-evaluation of a time-major trajectory, [T, B, ...]."""

    log_probs: dict[str, Array]  # masked per-part log pi(a_t | ...)
    log_prob: Array  # sum over parts of `log_probs`
    entropies: dict[str, Array]  # masked per-part entropies
    entropy: Array  # sum over parts of `entropies`
    baseline: Array
    logits: dict[str, Array]
    masks: dict[str, Array]  # mask of a_t, from a_t's flag (scenes: its operation)
    final_state: AgentState  # state after the last step, [B, ...]


def initial_state(action_spec: ActionSpec, config: AgentConfig, batch_size: int) -> AgentState:
    """Zero LSTM state and zero previous action for `batch_size` episodes."""
    zeros = jnp.zeros((batch_size, config.lstm_size), jnp.float32)
    return AgentState(
        lstm=LSTMState(hidden=zeros, cell=zeros),
        prev_action=zero_action(action_spec, (batch_size,)),
    )


# ----------------------------------------------------------------------------------------
# Layers.


class Torso(nn.Module):
    """Canvas (+ target) + coordinates -> conv, conditioned on previous action and noise,
    -> encoder -> Linear (SPIRAL's `Agent._torso`)."""

    action_spec: ActionSpec
    config: AgentConfig

    @nn.compact
    def __call__(
        self,
        observation: Mapping[str, Any],
        prev_action: Mapping[str, Array],
        noise: Array | None,
    ) -> tuple[Array, tuple[Array, ...]]:
        """-> (the Linear's output [N, torso_output], the encoder's maps coarsest first:
        its ReLU'd output at 8x8, then the stride-2 convs' outputs up to W/2)."""
        cfg = self.config
        canvas = observation["canvas"]
        n, height, width, _ = canvas.shape
        stages = log2_stages(width, 8, "canvas width")
        if height != width:
            raise ValueError(f"canvas must be square, got {height}x{width}")
        grid = grid_width_of(self.action_spec)

        images = [canvas, observation["target"]] if cfg.conditional else [canvas]
        conds = []
        mask = observation["action_mask"]
        for k, num in self.action_spec:
            feats = action_features(k, prev_action[k], num, grid)
            conds.append(dense(cfg.embed_dim, f"prev_{k}_embed")(feats) * mask[k][:, None])
        cond = layers.MLP(cfg.cond_hidden + (cfg.channels,), name="prev_action_mlp")(
            jnp.concatenate(conds, axis=-1)
        )
        if cfg.episode_noise_dim:
            cond = cond + layers.MLP(cfg.noise_hidden + (cfg.channels,), name="noise_mlp")(noise)
        h = layers.CoordConv(cfg.channels, 5, relu=True, name="conv")(
            jnp.concatenate(images, axis=-1), cond
        )

        h, maps = layers.ConvEncoder(cfg.channels, cfg.num_res_blocks, stages, name="encoder")(h)
        h = nn.relu(h)
        # The 8x8 level is the encoder's output; its last strided conv's (also 8x8) is not.
        maps = (h,) + maps[1:]
        return dense(cfg.torso_output, "linear")(h.reshape(n, -1)), maps


class AutoregressiveHeads(nn.Module):
    """Samples (or teacher-forces) the action parts in HEAD_ORDER (SPIRAL's
    `AutoregressiveHeads`)."""

    action_spec: ActionSpec
    config: AgentConfig

    @nn.compact
    def __call__(
        self,
        z: Array,
        maps: tuple[Array, ...] = (),
        key: Array | None = None,
        actions: Mapping[str, Array] | None = None,
        greedy: bool = False,
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        """z [N, lstm_size] -> (logits, actions), dicts in spec order.

        `maps`: the torso's encoder maps, coarsest first; the location decoders take the
        first `decoder_skips` of them (the 8x8 one first).

        Either `key` (sample; with `greedy`, take each part's most likely choice given
        the parts before it) or `actions` (teacher-force) must be given.
        """
        cfg = self.config
        spec = dict(self.action_spec)
        grid = grid_width_of(self.action_spec)
        stages = log2_stages(grid, 4, "grid_width")
        order = head_order(spec)
        keys = jax.random.split(key, len(order)) if actions is None else None
        n = z.shape[0]
        skips = tuple(maps[: cfg.decoder_skips])
        if len(skips) < cfg.decoder_skips or cfg.decoder_skips > stages:
            raise ValueError(
                f"agent.decoder_skips={cfg.decoder_skips}: at most {min(len(maps), stages)} "
                f"here (the encoder has {len(maps)} levels, the grid's decoders {stages})"
            )
        logits, taken = {}, {}
        for i, k in enumerate(order):
            if k in LOCATION_PARTS:
                zz = z.reshape(n, 4, 4, cfg.lstm_size // 16)
                decoder = layers.ConvDecoder(
                    cfg.channels, cfg.num_res_blocks, stages, 1, name=f"{k}_decoder"
                )
                out = decoder(zz, skips)
                logits[k] = out.reshape(n, grid * grid)
            else:
                logits[k] = dense(spec[k], f"{k}_head")(z)
            if actions is None and greedy:
                a = jnp.argmax(logits[k], axis=-1).astype(jnp.int32)
            elif actions is None:
                a = jax.random.categorical(keys[i], logits[k], axis=-1).astype(jnp.int32)
            else:
                a = actions[k].astype(jnp.int32)
            taken[k] = a
            # SPIRAL also builds the feedback for the last part; its output is unused
            # (XLA drops it) but its parameters exist, so the count matches.
            embed = dense(cfg.embed_dim, f"{k}_embed")(action_features(k, a, spec[k], grid))
            residual = layers.MLP(cfg.residual_hidden + (cfg.lstm_size,), name=f"{k}_residual_mlp")(
                jnp.concatenate([z, embed], axis=-1)
            )
            z = nn.relu(z + residual)
        names = [k for k, _ in self.action_spec]
        return {k: logits[k] for k in names}, {k: taken[k] for k in names}


class SpiralAgent(nn.Module):
    """SPIRAL's default agent. Build it with `make_agent` (checks the spec and sizes).

    Observations are dicts with `canvas` float32 [B, W, W, C], `action_mask`
    (name -> float32 [B], the mask of the previous action as the environment reports
    it) and, for conditional agents, `target` [B, W, W, C].
    """

    action_spec: ActionSpec
    config: AgentConfig = AgentConfig()

    def setup(self) -> None:
        self.torso = Torso(self.action_spec, self.config)
        self.core = layers.SonnetLSTM(self.config.lstm_size)
        self.heads = AutoregressiveHeads(self.action_spec, self.config)
        self.baseline_head = dense(1, "baseline")

    def _check_observation(self, observation: Mapping[str, Any]) -> None:
        if self.config.conditional and "target" not in observation:
            raise ValueError("a conditional agent needs observation['target']")
        if self.config.conditional and observation["target"].shape != observation["canvas"].shape:
            raise ValueError(
                f"target shape {observation['target'].shape} != canvas shape "
                f"{observation['canvas'].shape}"
            )
        missing = [k for k, _ in self.action_spec if k not in observation["action_mask"]]
        if missing:
            raise ValueError(f"observation['action_mask'] lacks {missing}")

    def _encode(
        self,
        observation: Mapping[str, Any],
        prev_action: Mapping[str, Array],
        reset: Array,
        noise: Array | None,
    ) -> tuple[Array, tuple[Array, ...]]:
        # At episode starts SPIRAL feeds a zero previous action.
        prev_action = {
            k: jnp.where(reset, jnp.zeros_like(prev_action[k]), prev_action[k])
            for k, _ in self.action_spec
        }
        observation = dict(observation)
        for k in ("canvas", "target"):
            if k in observation:
                observation[k] = self._compute(observation[k])
        return self.torso(observation, prev_action, None if noise is None else self._compute(noise))

    def _compute(self, x: Array) -> Array:
        return x.astype(check_compute_dtype(self.config.dtype))

    def _heads(
        self, z: Array, maps: tuple[Array, ...], **kwargs: Any
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        logits, action = self.heads(self._compute(z), maps, **kwargs)
        return {k: v.astype(jnp.float32) for k, v in logits.items()}, action

    def step(
        self,
        observation: Mapping[str, Any],
        step_type: Array,
        state: AgentState,
        noise: Array | None,
        key: Array,
        greedy: bool = False,
    ) -> tuple[AgentOutput, AgentState]:
        """One time step for a batch: samples an action autoregressively.

        Args:
          observation: batch-major observation, see the class docstring.
          step_type: int32 [B]; FIRST resets the LSTM and the previous action.
          state: the state returned by the previous step (or `initial_state`).
          noise: float32 [B, noise_dim], the episode's noise (None without noise).
          key: PRNG key for sampling.
          greedy: take each action part's most likely value (given the parts decided
            before it) instead of sampling; for evaluation.

        Returns:
          (AgentOutput(action, logits, baseline), new state).
        """
        self._check_observation(observation)
        reset = step_type == FIRST
        x, maps = self._encode(observation, state.prev_action, reset, noise)
        out, lstm = self.core(x[None], reset[None], state.lstm)
        z = out[0]
        logits, action = self._heads(z, maps, key=key, greedy=greedy)
        baseline = self.baseline_head(z)[..., 0].astype(jnp.float32)
        return AgentOutput(action=action, logits=logits, baseline=baseline), AgentState(
            lstm=lstm, prev_action=action
        )

    def unroll(
        self,
        observations: Mapping[str, Any],
        step_types: Array,
        actions: Mapping[str, Array],
        noise: Array | None,
        state: AgentState,
    ) -> UnrollOutput:
        """Re-evaluates given actions over a time-major trajectory.

        Teacher-forces the heads with `actions`, resets the LSTM (and previous action)
        at FIRST steps, and returns masked log-probs and entropies (masks from each
        action's own flag) and baselines.

        Args:
          observations: time-major observation, [T, B, ...] leaves.
          step_types: int32 [T, B].
          actions: name -> int32 [T, B], the actions taken at each step.
          noise: float32 [T, B, noise_dim] (None without noise).
          state: agent state before the first step, [B, ...].
        """
        self._check_observation(observations)
        t, b = step_types.shape
        names = [k for k, _ in self.action_spec]
        prev = {
            k: jnp.concatenate([state.prev_action[k][None], actions[k][:-1]], axis=0) for k in names
        }
        flat = lambda x: x.reshape((t * b,) + x.shape[2:])  # noqa: E731
        reset = step_types == FIRST
        x, maps = self._encode(
            jax.tree.map(flat, dict(observations)),
            {k: flat(v) for k, v in prev.items()},
            flat(reset),
            None if noise is None else flat(noise),
        )
        out, lstm = self.core(x.reshape(t, b, -1), reset, state.lstm)
        z = flat(out)
        logits, _ = self._heads(z, maps, actions={k: flat(actions[k]) for k in names})
        logits = {k: v.reshape(t, b, -1) for k, v in logits.items()}
        baseline = self.baseline_head(out)[..., 0].astype(jnp.float32)
        masks = masks_of(actions, self.action_spec)
        log_probs = masked_log_probs(logits, actions, masks)
        entropies = masked_entropies(logits, masks)
        return UnrollOutput(
            log_probs=log_probs,
            log_prob=sum(log_probs.values()),
            entropies=entropies,
            entropy=sum(entropies.values()),
            baseline=baseline,
            logits=logits,
            masks=masks,
            final_state=AgentState(lstm=lstm, prev_action={k: actions[k][-1] for k in names}),
        )


def make_agent(
    action_spec: Mapping[str, int] | ActionSpec, config: AgentConfig = AgentConfig()
) -> SpiralAgent:
    """Checks the action spec and builds the agent (the config checked itself)."""
    return SpiralAgent(action_spec=canonical_action_spec(action_spec), config=config)


def dummy_observation(
    agent: SpiralAgent, observation_shape: tuple[int, int, int], batch_size: int = 1
) -> dict[str, Any]:
    """A batch of blank observations of the right structure (for `init` and tracing)."""
    obs: dict[str, Any] = {
        "canvas": jnp.ones((batch_size,) + tuple(observation_shape), jnp.float32),
        "action_mask": {k: jnp.ones((batch_size,), jnp.float32) for k, _ in agent.action_spec},
    }
    if agent.config.conditional:
        obs["target"] = jnp.ones((batch_size,) + tuple(observation_shape), jnp.float32)
    return obs


def init_params(agent: SpiralAgent, key: Array, observation_shape: tuple[int, int, int]) -> Any:
    """Initialises the agent's parameters for canvases of `observation_shape` (W, W, C).

    Same distribution as `agent.init` (Sonnet 1's initialisers, see `sonnet_init`), but
    drawn as one truncated-normal vector cut into pieces: XLA on a CPU spends ~0.1 s
    compiling each separate random draw, so `agent.init` of even the small net takes
    ~10 s, this about a second. Not traceable (it runs eagerly).
    """
    if len(observation_shape) != 3 or observation_shape[0] != observation_shape[1]:
        raise ValueError(f"observation_shape must be (W, W, C), got {observation_shape}")
    log2_stages(observation_shape[0], 8, "canvas width")
    obs = dummy_observation(agent, observation_shape)
    dim = agent.config.episode_noise_dim
    noise = jnp.zeros((1, dim), jnp.float32) if dim else None
    state = initial_state(agent.action_spec, agent.config, 1)
    step_type = jnp.full((1,), FIRST, jnp.int32)
    shapes = jax.eval_shape(
        functools.partial(agent.init, method=SpiralAgent.step),
        jax.random.key(0),
        obs,
        step_type,
        state,
        noise,
        jax.random.key(0),
    )
    return layers.init_from_one_draw(shapes, key, layers.sonnet_std)


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
