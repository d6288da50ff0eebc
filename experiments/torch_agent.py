r"""python -m experiments.bench_torch --check --batch_sizes=16 --configs=paper

SPIRAL's agent in plain PyTorch: a same-machine baseline for the JAX learner's speed.

`TorchAgent.unroll` computes what `spiral_jax.agent.SpiralAgent.unroll` computes (the
teacher-forced re-evaluation of a time-major trajectory), written as a PyTorch user
would: NCHW tensors, `nn.Conv2d` / `nn.ConvTranspose2d` / `nn.Linear` / `nn.LSTMCell`,
time folded into the batch for the torso and the heads, a Python loop over time for the
LSTM. It computes in float32 (or, after `.double()`, in float64: `check_against_jax`'s
reference). It is used by `experiments.bench_torch`; nothing in `spiral_jax`
depends on it.

Weight layouts, Flax -> PyTorch (`load_flax_params`; `flax_grads` maps gradients back):

* Linear: kernel [in, out] -> weight [out, in]. The torso's Linear after the encoder
  reads the feature map flattened as (H, W, C) in Flax and as (C, H, W) here, so its
  input rows are permuted accordingly.
* Conv: kernel HWIO -> weight OIHW. A SAME 4x4 stride-2 conv on an even input pads one
  pixel on each side (`padding=1`); 3x3 and 5x5 convs pad 1 and 2.
* Transposed conv: `lax.conv_transpose(x, k, (2, 2), "SAME")` with a 4x4 kernel sends
  input i through tap t to output 2i + 2 - t, and `nn.ConvTranspose2d(4, stride=2,
  padding=1)` sends it through tap t' to 2i - 1 + t', so t' = 3 - t: the kernel is flipped
  in space and laid out [C_in, C_out, kh, kw].
* LSTM: Flax's one matrix over concat(x, h) with gates (i, j, f, o) and a constant
  forget bias of 1 -> `nn.LSTMCell`'s weight_ih / weight_hh with gates (i, f, g, o), the
  forget bias folded into bias_ih and bias_hh zero.

`check_against_jax` builds both agents with the same weights on a trajectory rolled by
`spiral_jax.rollout.make_episode_rollout` and reports the largest differences of the
logits, baselines, loss and every parameter gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
except ImportError as e:  # one line, with the fix
    raise ImportError("PyTorch is missing: pip install torch (the CPU-only wheel is enough)") from e

from spiral_jax.action_space import (
    LOCATION_PARTS,
    SCENES,
    ActionSpec,
    canonical_action_spec,
    family_of,
    grid_width_of,
    head_order,
)
from spiral_jax.agent import AgentConfig
from spiral_jax.envs import scenes as scenes_env
from spiral_jax.envs.libmypaint import MOVE_PARTS
from spiral_jax.layers import log2_stages
from spiral_jax.types import FIRST

Tensor = torch.Tensor
Path = tuple[str, ...]

# nn.LSTMCell orders its gates (i, f, g, o); Flax's SonnetLSTM (i, j, f, o), j = g.
# Swapping the middle two chunks maps either order to the other.
_GATE_ORDER = (0, 2, 1, 3)
_FORGET_BIAS = 1.0
_ENTROPY_COST = 0.01


def _mlp(in_features: int, sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with a ReLU between them and none after the last."""
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(in_features, size))
        if i < len(sizes) - 1:
            layers.append(nn.ReLU())
        in_features = size
    return nn.Sequential(*layers)


def _linears(mlp: nn.Sequential) -> list[nn.Linear]:
    return [m for m in mlp if isinstance(m, nn.Linear)]


def _feature_size(name: str, num: int) -> int:
    """Width of `action_features`: (y, x) for a location part, one-hot otherwise."""
    return 2 if name in LOCATION_PARTS else num


def action_features(
    name: str, action: Tensor, num: int, grid: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """`spiral_jax.action_space.action_features`: (y, x) in [-1, 1] or one-hot."""
    if name in LOCATION_PARTS:
        y = torch.div(action, grid, rounding_mode="floor").to(dtype) * (2.0 / (grid - 1)) - 1.0
        x = torch.remainder(action, grid).to(dtype) * (2.0 / (grid - 1)) - 1.0
        return torch.stack([y, x], dim=-1)
    return F.one_hot(action, num).to(dtype)


class ResidualStack(nn.Module):
    """Pre-activation residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv), then a ReLU."""

    def __init__(self, channels: int, num_blocks: int) -> None:
        super().__init__()
        self.conv3 = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_blocks)
        )
        self.conv1 = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_blocks))

    def forward(self, h: Tensor) -> Tensor:
        for conv3, conv1 in zip(self.conv3, self.conv1, strict=True):
            h = h + conv1(F.relu(conv3(F.relu(h))))
        return F.relu(h)


class ConvEncoder(nn.Module):
    """4x4 stride-2 convs with ReLU, a 3x3 conv and a residual stack."""

    def __init__(self, channels: int, num_blocks: int, num_stages: int) -> None:
        super().__init__()
        self.strided = nn.ModuleList(
            nn.Conv2d(channels, channels, 4, stride=2, padding=1) for _ in range(num_stages)
        )
        self.pre_stack = nn.Conv2d(channels, channels, 3, padding=1)
        self.res = ResidualStack(channels, num_blocks)

    def forward(self, h: Tensor) -> Tensor:
        for conv in self.strided:
            h = F.relu(conv(h))
        return self.res(self.pre_stack(h))


class ConvDecoder(nn.Module):
    """A 3x3 conv, a residual stack, 4x4 stride-2 transposed convs with ReLU, a 3x3 conv
    to one channel."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, num_stages: int) -> None:
        super().__init__()
        self.pre_stack = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.res = ResidualStack(channels, num_blocks)
        self.strided_transpose = nn.ModuleList(
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
            for _ in range(num_stages)
        )
        self.final = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        h = self.res(self.pre_stack(h))
        for conv in self.strided_transpose:
            h = F.relu(conv(h))
        return self.final(h)


class Torso(nn.Module):
    """Canvas (+ target) + coordinates -> 5x5 conv, conditioned on the previous action and
    the noise -> encoder -> Linear."""

    def __init__(
        self, action_spec: ActionSpec, config: AgentConfig, observation_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        width, _, colours = observation_shape
        c = config.channels
        self.action_spec = action_spec
        self.grid = grid_width_of(action_spec)
        self.conditional = config.conditional
        in_channels = colours * (2 if config.conditional else 1) + 2
        self.conv = nn.Conv2d(in_channels, c, 5, padding=2)
        self.prev_embed = nn.ModuleDict(
            {k: nn.Linear(_feature_size(k, num), config.embed_dim) for k, num in action_spec}
        )
        self.prev_action_mlp = _mlp(config.embed_dim * len(action_spec), config.cond_hidden + (c,))
        self.noise_mlp = (
            _mlp(config.episode_noise_dim, config.noise_hidden + (c,))
            if config.episode_noise_dim
            else None
        )
        self.encoder = ConvEncoder(c, config.num_res_blocks, log2_stages(width, 8, "canvas"))
        self.linear = nn.Linear(8 * 8 * c, config.torso_output)
        line = torch.linspace(-1.0, 1.0, width)
        x_grid, y_grid = line[None, :].expand(width, width), line[:, None].expand(width, width)
        self.register_buffer("coords", torch.stack([x_grid, y_grid])[None], persistent=False)

    def forward(
        self,
        canvas: Tensor,
        target: Tensor | None,
        action_mask: Mapping[str, Tensor],
        prev_action: Mapping[str, Tensor],
        noise: Tensor | None,
    ) -> Tensor:
        n = canvas.shape[0]
        spatial = [canvas] + ([target] if self.conditional else [])
        spatial.append(self.coords.expand(n, -1, -1, -1))
        h = self.conv(torch.cat(spatial, dim=1))
        embeds = [
            self.prev_embed[k](action_features(k, prev_action[k], num, self.grid, h.dtype))
            * action_mask[k][:, None]
            for k, num in self.action_spec
        ]
        cond = self.prev_action_mlp(torch.cat(embeds, dim=-1))
        if self.noise_mlp is not None:
            cond = cond + self.noise_mlp(noise)
        h = F.relu(h + cond[:, :, None, None])
        h = self.encoder(h)
        return self.linear(F.relu(h.flatten(1)))


class AutoregressiveHeads(nn.Module):
    """Teacher-forced heads in sampling order: a spatial decoder for location parts, a
    Linear for the others; after each part z = ReLU(z + MLP(concat(z, embed(a))))."""

    def __init__(self, action_spec: ActionSpec, config: AgentConfig) -> None:
        super().__init__()
        self.spec = dict(action_spec)
        self.names = [k for k, _ in action_spec]
        self.order = head_order(action_spec)
        self.grid = grid_width_of(action_spec)
        self.lstm_size = config.lstm_size
        h, c = config.lstm_size, config.channels
        stages = log2_stages(self.grid, 4, "grid_width")
        locations = [k for k in self.order if k in LOCATION_PARTS]
        self.decoder = nn.ModuleDict(
            {k: ConvDecoder(h // 16, c, config.num_res_blocks, stages) for k in locations}
        )
        self.head = nn.ModuleDict(
            {k: nn.Linear(h, self.spec[k]) for k in self.order if k not in LOCATION_PARTS}
        )
        # The last part's feedback is never used; its parameters exist so that the
        # parameter count and the Flax tree match (and get no gradient here).
        self.embed = nn.ModuleDict(
            {k: nn.Linear(_feature_size(k, self.spec[k]), config.embed_dim) for k in self.order}
        )
        self.residual_mlp = nn.ModuleDict(
            {k: _mlp(h + config.embed_dim, config.residual_hidden + (h,)) for k in self.order}
        )

    def forward(self, z: Tensor, actions: Mapping[str, Tensor]) -> dict[str, Tensor]:
        n = z.shape[0]
        logits = {}
        for i, k in enumerate(self.order):
            if k in self.decoder:
                # Flax reshapes z to [N, 4, 4, h / 16] (NHWC); here as NCHW.
                zz = z.view(n, 4, 4, self.lstm_size // 16).permute(0, 3, 1, 2)
                logits[k] = self.decoder[k](zz).flatten(1)  # index y * G + x
            else:
                logits[k] = self.head[k](z)
            if i < len(self.order) - 1:
                feats = action_features(k, actions[k], self.spec[k], self.grid, z.dtype)
                residual = self.residual_mlp[k](torch.cat([z, self.embed[k](feats)], dim=-1))
                z = F.relu(z + residual)
        return {k: logits[k] for k in self.names}


class TorchAgent(nn.Module):
    """SPIRAL's default agent (`spiral_jax.agent.SpiralAgent`), teacher-forced unroll only.

    Args:
      action_spec: name -> number of choices, e.g. `env.action_spec()` (libmypaint or
        scenes).
      config: the sizes; `dtype` must be float32.
      observation_shape: (W, W, C) of the canvas, as `init_params` takes it.
    """

    def __init__(
        self,
        action_spec: Mapping[str, int] | ActionSpec,
        config: AgentConfig,
        observation_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        if config.dtype != "float32":
            raise ValueError(f"TorchAgent computes in float32 only, got dtype={config.dtype!r}")
        if len(observation_shape) != 3 or observation_shape[0] != observation_shape[1]:
            raise ValueError(f"observation_shape must be (W, W, C), got {observation_shape}")
        self.action_spec = canonical_action_spec(action_spec)
        self.config = config
        self.observation_shape = tuple(observation_shape)
        self.torso = Torso(self.action_spec, config, self.observation_shape)
        self.core = nn.LSTMCell(config.torso_output, config.lstm_size)
        self.heads = AutoregressiveHeads(self.action_spec, config)
        self.baseline = nn.Linear(config.lstm_size, 1)

    def unroll(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Re-evaluates the actions of a time-major trajectory (`torch_inputs`).

        Returns a dict: `logits` (name -> [T, B, n]), `baseline` [T, B], `masks`,
        `log_probs` and `entropies` (name -> [T, B], masked), `log_prob` and `entropy`
        (their sums over parts).
        """
        step_types, actions = inputs["step_types"], inputs["actions"]
        t, b = step_types.shape
        names = [k for k, _ in self.action_spec]
        reset = step_types == FIRST
        keep = (~reset).float()
        # The previous action of step t is a_{t-1} (the state's at t = 0), zero at resets.
        prev = {
            k: torch.cat([inputs["prev_action"][k][None], actions[k][:-1]]) * (~reset).long()
            for k in names
        }

        def flat(x: Tensor) -> Tensor:
            return x.flatten(0, 1)

        target = inputs.get("target")
        noise = inputs.get("noise") if self.config.episode_noise_dim else None
        x = self.torso(
            flat(inputs["canvas"]),
            None if target is None else flat(target),
            {k: flat(v) for k, v in inputs["action_mask"].items()},
            {k: flat(v) for k, v in prev.items()},
            None if noise is None else flat(noise),
        ).view(t, b, -1)

        h, c = inputs["hidden"], inputs["cell"]
        outputs = []
        for i in range(t):
            h, c = self.core(x[i], (h * keep[i, :, None], c * keep[i, :, None]))
            outputs.append(h)
        out = torch.stack(outputs)

        logits = self.heads(flat(out), {k: flat(actions[k]) for k in names})
        logits = {k: v.view(t, b, -1) for k, v in logits.items()}
        baseline = self.baseline(out)[..., 0]
        masks = masks_of(actions, self.action_spec)
        log_probs, entropies = {}, {}
        for k, lg in logits.items():
            logp = F.log_softmax(lg, dim=-1)
            picked = logp.gather(-1, actions[k][..., None])[..., 0]
            log_probs[k] = picked * masks[k]
            entropies[k] = -(logp.exp() * logp).sum(-1) * masks[k]
        return dict(
            logits=logits,
            baseline=baseline,
            masks=masks,
            log_probs=log_probs,
            entropies=entropies,
            log_prob=sum(log_probs.values()),
            entropy=sum(entropies.values()),
        )

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return self.unroll(inputs)


def masks_of(actions: Mapping[str, Tensor], action_spec: ActionSpec) -> dict[str, Tensor]:
    """`spiral_jax.action_space.masks_of`: which parts of each action count, float."""
    if family_of(action_spec) == SCENES:
        counts = (actions["operation"] != scenes_env.SKIP).float()
        always = scenes_env.SKIP_PARTS
    else:
        counts = (actions["flag"] == 1).float()
        always = MOVE_PARTS
    return {k: torch.ones_like(counts) if k in always else counts for k, _ in action_spec}


def learner_loss(agent: TorchAgent, inputs: Mapping[str, Any]) -> Tensor:
    """The loss whose gradient `experiments.bench_agent.learner_step` takes:
    -mean(log_prob * stop_grad(-baseline)) + mean(baseline^2) - 0.01 mean(entropy)."""
    out = agent.unroll(inputs)
    baseline = out["baseline"]
    advantage = -baseline.detach()
    return (
        -(out["log_prob"] * advantage).mean()
        + (baseline**2).mean()
        - _ENTROPY_COST * out["entropy"].mean()
    )


def torch_inputs(unroll_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`Trajectory.unroll_inputs()` (JAX, NHWC) -> the tensors `TorchAgent.unroll` takes
    (NCHW images, int64 actions)."""

    def image(x: Any) -> Tensor:  # [T, B, H, W, C] -> [T, B, C, H, W]
        return torch.from_numpy(np.array(x, np.float32)).permute(0, 1, 4, 2, 3).contiguous()

    def ints(x: Any) -> Tensor:
        return torch.from_numpy(np.asarray(x).astype(np.int64))

    def floats(x: Any) -> Tensor:
        return torch.from_numpy(np.asarray(x, np.float32).copy())

    obs = unroll_inputs["observations"]
    state = unroll_inputs["state"]
    out: dict[str, Any] = dict(
        canvas=image(obs["canvas"]),
        action_mask={k: floats(v) for k, v in obs["action_mask"].items()},
        step_types=ints(unroll_inputs["step_types"]),
        actions={k: ints(v) for k, v in unroll_inputs["actions"].items()},
        prev_action={k: ints(v) for k, v in state.prev_action.items()},
        hidden=floats(state.lstm.hidden),
        cell=floats(state.lstm.cell),
    )
    if "target" in obs:
        out["target"] = image(obs["target"])
    if unroll_inputs.get("noise") is not None:
        out["noise"] = floats(unroll_inputs["noise"])
    return out


# ----------------------------------------------------------------------------------------
# Flax parameters <-> torch parameters.

# How one Flax module's parameters become one torch module's, by kind: `_to_torch`
# converts the values, `_to_flax` converts back (for gradients).
_LINEAR, _LINEAR_HWC, _CONV, _CONV_T, _LSTM = "linear", "linear_hwc", "conv", "conv_t", "lstm"


def _module_pairs(agent: TorchAgent) -> Iterator[tuple[Path, nn.Module, str]]:
    """(Flax module path, torch module, kind) for every parametrised module."""

    def mlp(path: Path, seq: nn.Sequential) -> Iterator[tuple[Path, nn.Module, str]]:
        for i, lin in enumerate(_linears(seq)):
            yield path + (f"linear_{i}",), lin, _LINEAR

    def res(path: Path, stack: ResidualStack) -> Iterator[tuple[Path, nn.Module, str]]:
        for i, (c3, c1) in enumerate(zip(stack.conv3, stack.conv1, strict=True)):
            yield path + (f"res_3x3_{i}",), c3, _CONV
            yield path + (f"res_1x1_{i}",), c1, _CONV

    torso = agent.torso
    p: Path = ("params", "torso")
    yield p + ("conv",), torso.conv, _CONV
    for k, lin in torso.prev_embed.items():
        yield p + (f"prev_{k}_embed",), lin, _LINEAR
    yield from mlp(p + ("prev_action_mlp",), torso.prev_action_mlp)
    if torso.noise_mlp is not None:
        yield from mlp(p + ("noise_mlp",), torso.noise_mlp)
    for i, conv in enumerate(torso.encoder.strided):
        yield p + ("encoder", f"strided_{i}"), conv, _CONV
    yield p + ("encoder", "pre_stack"), torso.encoder.pre_stack, _CONV
    yield from res(p + ("encoder", "res"), torso.encoder.res)
    yield p + ("linear",), torso.linear, _LINEAR_HWC
    yield ("params", "core"), agent.core, _LSTM
    heads = agent.heads
    p = ("params", "heads")
    for k, dec in heads.decoder.items():
        d = p + (f"{k}_decoder",)
        yield d + ("pre_stack",), dec.pre_stack, _CONV
        yield from res(d + ("res",), dec.res)
        for i, conv in enumerate(dec.strided_transpose):
            yield d + (f"strided_transpose_{i}",), conv, _CONV_T
        yield d + ("final",), dec.final, _CONV
    for k, lin in heads.head.items():
        yield p + (f"{k}_head",), lin, _LINEAR
    for k, lin in heads.embed.items():
        yield p + (f"{k}_embed",), lin, _LINEAR
    for k, seq in heads.residual_mlp.items():
        yield from mlp(p + (f"{k}_residual_mlp",), seq)
    yield ("params", "baseline"), agent.baseline, _LINEAR


def _gates(x: np.ndarray, axis: int) -> np.ndarray:
    """Reorders the four gate chunks along `axis` between Flax's and torch's orders."""
    chunks = np.split(x, 4, axis=axis)
    return np.concatenate([chunks[q] for q in _GATE_ORDER], axis=axis)


def _hwc_to_chw_rows(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Flax Linear kernel [H*W*C, out] over an NHWC-flattened input -> torch weight
    [out, C*H*W] over an NCHW-flattened one."""
    rows, out = kernel.shape
    side = math.isqrt(rows // channels)
    return kernel.reshape(side, side, channels, out).transpose(3, 2, 0, 1).reshape(out, rows)


def _chw_to_hwc_rows(weight: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of `_hwc_to_chw_rows`."""
    out, cols = weight.shape
    side = math.isqrt(cols // channels)
    return weight.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(cols, out)


def _to_torch(
    kind: str, module: nn.Module, leaves: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A Flax module's parameters -> {torch parameter name: value}."""
    if kind == _LSTM:
        w, b = leaves["w_gates"], leaves["b_gates"]
        n_in = module.input_size
        bias = _gates(b, 0).copy()
        hid = module.hidden_size
        bias[hid : 2 * hid] += _FORGET_BIAS  # torch's second chunk is the forget gate
        return dict(
            weight_ih=_gates(w[:n_in].T, 0),
            weight_hh=_gates(w[n_in:].T, 0),
            bias_ih=bias,
            bias_hh=np.zeros_like(bias),
        )
    kernel = leaves["kernel"]
    if kind == _LINEAR:
        weight = kernel.T
    elif kind == _LINEAR_HWC:
        weight = _hwc_to_chw_rows(kernel, module.in_features // 64)
    elif kind == _CONV:
        weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif kind == _CONV_T:
        weight = kernel[::-1, ::-1].transpose(2, 3, 0, 1)  # flipped, HWIO -> IOHW
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return dict(weight=weight, bias=leaves["bias"])


def _to_flax(
    kind: str, module: nn.Module, values: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """{torch parameter name: value (a gradient)} -> the Flax module's leaves."""
    if kind == _LSTM:
        w = np.concatenate([_gates(values["weight_ih"], 0).T, _gates(values["weight_hh"], 0).T])
        # bias_ih and bias_hh enter the gates as one sum: the Flax bias gets either's grad.
        return dict(w_gates=w, b_gates=_gates(values["bias_ih"], 0))
    weight = values["weight"]
    if kind == _LINEAR:
        kernel = weight.T
    elif kind == _LINEAR_HWC:
        kernel = _chw_to_hwc_rows(weight, module.in_features // 64)
    elif kind == _CONV:
        kernel = weight.transpose(2, 3, 1, 0)
    elif kind == _CONV_T:
        kernel = weight.transpose(2, 3, 0, 1)[::-1, ::-1]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return dict(kernel=np.ascontiguousarray(kernel), bias=values["bias"])


def _subtree(tree: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    for key in path:
        tree = tree[key]
    return tree


def _flat_leaves(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat_leaves(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def load_flax_params(agent: TorchAgent, flax_params: Mapping[str, Any]) -> None:
    """Copies a Flax parameter tree (`spiral_jax.agent.init_params`) into `agent`.

    Every Flax leaf and every torch parameter must be used exactly once; shapes must
    match exactly (ValueError otherwise).
    """
    used_flax: set[Path] = set()
    used_torch: set[int] = set()
    for path, module, kind in _module_pairs(agent):
        node = _subtree(flax_params, path)
        leaves = {k: np.asarray(v, np.float32) for k, v in node.items()}
        used_flax.update(path + (k,) for k in leaves)
        for name, value in _to_torch(kind, module, leaves).items():
            param = getattr(module, name)
            if tuple(param.shape) != value.shape:
                raise ValueError(
                    f"{'/'.join(path)}: {name} {tuple(param.shape)} != converted {value.shape}"
                )
            with torch.no_grad():
                param.copy_(torch.from_numpy(np.array(value, np.float32)))
            used_torch.add(id(param))
    missing_flax = set(_flat_leaves(flax_params)) - used_flax
    missing_torch = [n for n, p in agent.named_parameters() if id(p) not in used_torch]
    if missing_flax or missing_torch:
        raise ValueError(
            f"unmatched parameters: flax {sorted('/'.join(p) for p in missing_flax)}, "
            f"torch {missing_torch}"
        )


def flax_grads(agent: TorchAgent) -> dict[str, Any]:
    """The torch parameters' `.grad` as a Flax-shaped nested dict of numpy arrays
    (zeros where a parameter got no gradient)."""
    tree: dict[str, Any] = {}
    for path, module, kind in _module_pairs(agent):
        values = {}
        for name, param in module.named_parameters(recurse=False):
            grad = param.grad
            values[name] = (
                np.zeros(tuple(param.shape), np.float32)
                if grad is None
                else grad.detach().numpy().copy()
            )
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node.update(_to_flax(kind, module, values))
    return tree


# ----------------------------------------------------------------------------------------
# Equivalence with the JAX agent.


def _max_diff(a: Any, b: Any) -> tuple[float, float]:
    """(max |a - b|, max |b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0)), float(np.max(np.abs(b), initial=0.0))


def check_against_jax(
    config: AgentConfig | None = None,
    batch: int = 2,
    time: int = 19,
    canvas_width: int = 64,
    grid_width: int = 32,
    seed: int = 0,
    float64: bool = True,
) -> dict[str, tuple[float, float]]:
    """Runs the JAX and the torch agent with the same weights on one real trajectory.

    Rolls `batch` whole libmypaint episodes of `time` decisions (episode_length =
    time + 1) with `spiral_jax.rollout.make_episode_rollout`, re-evaluates them with
    `SpiralAgent.unroll` and `TorchAgent.unroll`, and differentiates the loss of
    `experiments.bench_agent.learner_step` in both (JAX's through `jax_learner`).
    `config` defaults to SPIRAL's network, `AgentConfig()`; a conditional config gets
    uniform random targets.

    With `float64`, the torch agent also computes the gradients in float64, a reference
    that tells which float32 side a difference comes from.

    Returns:
      name -> (max |torch - jax|, max |jax|) for `logits/<part>`, `baseline`,
      `log_prob`, `entropy`, `loss` and `grad/<flax path>` of every parameter
      (`zero_grad/<flax path>` for those in `exactly_zero_grads`); with `float64`
      also `f64_jax/<flax path>` = (max |jax - ref|, max |ref|) and `f64_torch/<flax
      path>` = (max |torch - ref|, max |ref|), ref the float64 gradient, for the
      leaves of `grad/`.
    """
    import jax

    from experiments import bench_agent
    from spiral_jax import agent as agent_lib
    from spiral_jax import rollout as rollout_lib
    from spiral_jax.envs.libmypaint import LibMyPaint

    config = AgentConfig() if config is None else config
    env = LibMyPaint(episode_length=time + 1, canvas_width=canvas_width, grid_width=grid_width)
    jax_agent = agent_lib.make_agent(env.action_spec(), config)
    params = agent_lib.init_params(jax_agent, jax.random.key(seed), env.observation_shape)
    targets = (
        jax.random.uniform(jax.random.key(seed + 1), (batch,) + tuple(env.observation_shape))
        if config.conditional
        else None
    )
    episodes = rollout_lib.make_episode_rollout(env, jax_agent, batch)
    traj = episodes(params, jax.random.key(seed + 2), targets)

    loss_j, out_j = jax.jit(bench_agent.learner_loss, static_argnums=0)(jax_agent, params, traj)
    grads_j = bench_agent.learner(jax_agent, params, traj)

    torch_agent = TorchAgent(env.action_spec(), config, env.observation_shape)
    load_flax_params(torch_agent, params)
    inputs = torch_inputs(traj.unroll_inputs())
    torch_agent.zero_grad(set_to_none=True)
    out_t = torch_agent.unroll(inputs)
    loss_t = learner_loss(torch_agent, inputs)
    loss_t.backward()
    grads_t = _flat_leaves(flax_grads(torch_agent))

    report: dict[str, tuple[float, float]] = {}
    for k, lg in out_t["logits"].items():
        report[f"logits/{k}"] = _max_diff(lg.detach().numpy(), out_j.logits[k])
    for k in ("baseline", "log_prob", "entropy"):
        report[k] = _max_diff(out_t[k].detach().numpy(), getattr(out_j, k))
    report["loss"] = _max_diff(loss_t.item(), loss_j)
    zero = exactly_zero_grads(torch_agent.action_spec)
    for path, g in _flat_leaves(grads_j).items():
        name = "/".join(path[1:])
        prefix = "zero_grad/" if name in zero or name.startswith(zero) else "grad/"
        report[prefix + name] = _max_diff(grads_t[path], g)
    if float64:
        torch_agent.double()
        torch_agent.zero_grad(set_to_none=True)
        learner_loss(torch_agent, _to_float64(inputs)).backward()
        grads_64 = _flat_leaves(flax_grads(torch_agent))
        for path, g in _flat_leaves(grads_j).items():
            name = "/".join(path[1:])
            if "grad/" + name in report:
                report["f64_jax/" + name] = _max_diff(g, grads_64[path])
                report["f64_torch/" + name] = _max_diff(grads_t[path], grads_64[path])
    return report


def _to_float64(inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return {k: _to_float64(v) for k, v in inputs.items()}
    return inputs.double() if torch.is_floating_point(inputs) else inputs


def exactly_zero_grads(action_spec: ActionSpec) -> tuple[str, ...]:
    """Flax parameter paths (or their prefixes) whose gradient is zero in exact
    arithmetic: the last head's feedback, which nothing uses, and the location
    decoders' final bias, which shifts every logit of a softmax alike. Both agents
    return rounding noise there, so `check_against_jax` compares them in absolute terms."""
    last = head_order(action_spec)[-1]
    locations = [k for k in head_order(action_spec) if k in LOCATION_PARTS]
    return (f"heads/{last}_embed/", f"heads/{last}_residual_mlp/") + tuple(
        f"heads/{k}_decoder/final/bias" for k in locations
    )


def _relative(d: tuple[float, float]) -> float:
    return d[0] / max(d[1], 1e-30)


def summarize(report: Mapping[str, tuple[float, float]], worst: int = 5) -> list[str]:
    """Lines for a `check_against_jax` report: outputs, loss, the worst gradients."""

    def line(name: str, d: tuple[float, float], width: int) -> str:
        return (
            f"{name:<{width}} max |diff| {d[0]:.2e}  (max |jax| {d[1]:.2e}, "
            f"relative {_relative(d):.1e})"
        )

    lines = ["  " + line(n, d, 24) for n, d in report.items() if "/" not in n or "logits/" in n]
    grads = {n: d for n, d in report.items() if n.startswith("grad/")}
    zeros = {n: d for n, d in report.items() if n.startswith("zero_grad/")}
    ranked = sorted(grads.items(), key=lambda kv: _relative(kv[1]), reverse=True)
    lines.append(
        f"  gradients: {len(grads)} leaves, largest relative difference "
        f"{_relative(ranked[0][1]):.1e}; the {min(worst, len(ranked))} worst:"
    )
    lines += ["    " + line(n, d, 44) for n, d in ranked[:worst]]
    if zeros:
        lines.append(
            f"  {len(zeros)} gradients zero in exact arithmetic: max |diff| "
            f"{max(d[0] for d in zeros.values()):.1e}, max |jax| "
            f"{max(d[1] for d in zeros.values()):.1e}"
        )
    for prefix, what in (("f64_jax/", "JAX"), ("f64_torch/", "torch")):
        ref = {n[len(prefix) :]: d for n, d in report.items() if n.startswith(prefix)}
        if ref:
            name, d = max(ref.items(), key=lambda kv: _relative(kv[1]))
            lines.append(
                f"  {what:<5} float32 gradients vs torch float64: largest relative difference "
                f"{_relative(d):.1e} ({name})"
            )
    return lines


def max_relative(report: Mapping[str, tuple[float, float]], prefix: str = "") -> float:
    """The largest max |diff| / max |jax| over a report's torch-vs-JAX entries (outputs,
    loss, `grad/`), or with `prefix` (`f64_jax/`, `f64_torch/`) over those entries."""
    if prefix:
        return max(_relative(d) for n, d in report.items() if n.startswith(prefix))
    return max(
        _relative(d)
        for n, d in report.items()
        if not n.startswith(("zero_grad/", "f64_jax/", "f64_torch/"))
    )
