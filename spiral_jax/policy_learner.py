"""The policy's learner: V-trace actor-critic (IMPALA, Espeholt et al. 2018) with Adam.

SPIRAL trains its agent with advantage actor-critic and an entropy bonus inside an
IMPALA-style system; V-trace corrects the lag between the policy that acted and the one
being updated (several passes over one rollout, `passes`). The loss of one pass is

    -mean(pg_advantage * log pi(a|s)) + baseline_cost * 0.5 * mean((v_s - V(s))^2)
    - entropy_cost * mean(entropy),

with masked log-probs and entropies of SPIRAL's multi-part actions (`agent.unroll`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spiral_jax import vtrace
from spiral_jax.agent import SpiralAgent
from spiral_jax.nonfinite import skip_nonfinite
from spiral_jax.rollout import Trajectory
from spiral_jax.sharding import AXIS
from spiral_jax.types import Array, cast_floating, check_adam, is_number


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The policy's optimiser and loss; `config.learner` holds these fields."""

    learning_rate: float = 1e-4  # Adam (SPIRAL: PBT over 1e-5..3e-4)
    # Cosine-decay the learning rate to 0 over this many train steps, then hold it at 0
    # (0 = constant). Setting it to the run's length lets the policy and its average
    # settle by the last checkpoint instead of stopping mid-swing.
    lr_decay_steps: int = 0
    b1: float = 0.5  # Adam's beta1 (SPIRAL)
    b2: float = 0.999  # Adam's beta2
    eps: float = 1e-8  # Adam's epsilon
    # Gradients clipped to this global norm before Adam. The losses are means over the
    # T x B steps, so norms are about 0.1-1 for rewards of order 1 (SPIRAL's 40 was for
    # sums): set it just above a run's usual `policy_grad_norm`, so that it cuts the
    # spikes (`policy_grad_clipped` logs how often it binds).
    max_grad_norm: float = 1.0
    entropy_cost: float = 0.01  # weight of the entropy bonus (SPIRAL: PBT over 2e-3..1e-1)
    # Divide each action part's entropy by its largest value, log(choices), so that a
    # 2-way flag and a 256-way location weigh the same in the entropy bonus.
    normalize_entropy: bool = False
    baseline_cost: float = 0.5  # weight of the value regression
    passes: int = 1  # policy updates per rollout (V-trace corrects the later passes' lag)
    clip_rho_threshold: float = 1.0  # V-trace's rho-bar
    clip_pg_rho_threshold: float = 1.0  # V-trace's rho-bar of the policy gradient
    vtrace_lambda: float = 1.0  # V-trace's traces lambda * min(1, rho)
    # Keep an exponential moving average of the policy's parameters with this decay and
    # sample, evaluate and pick checkpoints with it (0 = none): averaging damps a
    # generator's circling in adversarial games (Yazici et al., ICLR 2019).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        check_adam("learner", self.learning_rate, self.b1, self.b2, self.eps)
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 1:
            raise ValueError(f"learner.passes={self.passes!r}: must be an int >= 1")
        if (isinstance(self.lr_decay_steps, bool) or not isinstance(self.lr_decay_steps, int)
                or self.lr_decay_steps < 0):
            raise ValueError(f"learner.lr_decay_steps={self.lr_decay_steps!r}: must be an int"
                             " >= 0 (0 = a constant learning rate)")
        for name, low in (("max_grad_norm", 0.0), ("clip_rho_threshold", 0.0),
                          ("clip_pg_rho_threshold", 0.0)):
            value = getattr(self, name)
            if not is_number(value) or not value > low:
                raise ValueError(f"learner.{name}={value!r}: must be a number > 0")
        for name in ("entropy_cost", "baseline_cost"):
            if not is_number(getattr(self, name)) or not getattr(self, name) >= 0:
                raise ValueError(f"learner.{name}={getattr(self, name)!r}: must be >= 0")
        if not is_number(self.vtrace_lambda) or not 0.0 <= self.vtrace_lambda <= 1.0:
            raise ValueError(f"learner.vtrace_lambda={self.vtrace_lambda!r}: must be in [0, 1]")
        if not is_number(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"learner.ema_decay={self.ema_decay!r}: must be in [0, 1) (0 = no average)"
            )


def learning_rate(cfg: LearnerConfig) -> float | optax.Schedule:
    """The configured rate, or with `lr_decay_steps` a cosine decay to 0 over that many
    train steps. The schedule counts Adam's updates, `passes` per train step (a skipped,
    non-finite update does not count)."""
    if not cfg.lr_decay_steps:
        return cfg.learning_rate
    return optax.cosine_decay_schedule(cfg.learning_rate, cfg.lr_decay_steps * cfg.passes)


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """Adam after clipping by global norm; an update whose gradients are not finite is
    skipped, leaving parameters and Adam's moments as they were (`skip_nonfinite`)."""
    adam = optax.adam(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return skip_nonfinite(optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adam))


def max_entropies(action_spec: Any) -> dict[str, float]:
    """log(number of choices) of each action part: its largest possible entropy."""
    return {k: float(np.log(max(n, 2))) for k, n in dict(action_spec).items()}


def loss_fn(
    params: Any,
    agent: SpiralAgent,
    cfg: LearnerConfig,
    traj: Trajectory,
    rewards: Array,
    discount: float,
    entropy_cost: float | Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The V-trace actor-critic loss of one pass and its metrics (this device's batch).

    `entropy_cost` replaces `cfg.entropy_cost` (a population member's own, traced)."""
    entropy_cost = cfg.entropy_cost if entropy_cost is None else entropy_cost
    dtype = jnp.dtype(agent.config.dtype)
    params_c = params if dtype == jnp.float32 else cast_floating(params, dtype)
    out = agent.apply(params_c, **traj.unroll_inputs(), method=SpiralAgent.unroll)
    target_log_prob = out.log_prob.astype(jnp.float32)
    baseline = out.baseline.astype(jnp.float32)
    if cfg.normalize_entropy:
        largest = max_entropies(agent.action_spec)
        entropy = sum(h.astype(jnp.float32) / largest[k] for k, h in out.entropies.items())
    else:
        entropy = out.entropy.astype(jnp.float32)
    log_rhos = jax.lax.stop_gradient(target_log_prob) - traj.behaviour_log_prob
    vt = vtrace.from_importance_weights(
        log_rhos=log_rhos,
        discounts=traj.discount * discount,
        rewards=rewards,
        values=jax.lax.stop_gradient(baseline),
        bootstrap_value=jnp.zeros_like(baseline[0]),  # whole episodes end in LAST
        clip_rho_threshold=cfg.clip_rho_threshold,
        clip_pg_rho_threshold=cfg.clip_pg_rho_threshold,
        lambda_=cfg.vtrace_lambda,
    )
    pg_loss = -jnp.mean(vt.pg_advantages * target_log_prob)
    baseline_loss = 0.5 * jnp.mean(jnp.square(vt.vs - baseline))
    entropy_mean = jnp.mean(entropy)
    loss = pg_loss + cfg.baseline_cost * baseline_loss - entropy_cost * entropy_mean
    metrics = {
        "policy_loss": pg_loss,
        "baseline_loss": baseline_loss,
        "entropy": entropy_mean,
        "mean_rho": jnp.mean(jnp.exp(log_rhos)),
        "value": jnp.mean(baseline),
    }
    return loss, metrics


def update(
    params: Any,
    opt_state: Any,
    agent: SpiralAgent,
    cfg: LearnerConfig,
    optimizer: optax.GradientTransformation,
    traj: Trajectory,
    rewards: Array,
    discount: float,
    hparams: dict[str, Array] | None = None,
) -> tuple[Any, Any, dict[str, Array]]:
    """`cfg.passes` Adam steps on one rollout, gradients averaged over the mesh (inside
    `shard_map`). Returns the new parameters and optimiser state, and metrics.

    The metrics are the first pass's (those of the policy that acted: its loss, entropy
    and value), and with several passes also the last pass's, prefixed ``last_``: its
    ``last_mean_rho`` says how far the updates took the policy from the one that acted
    (the first pass's ``mean_rho`` is 1 by construction). ``policy_grad_clipped`` is 1
    where a pass's gradient norm exceeded ``max_grad_norm`` (averaged over the passes).

    `hparams` (a population member's, `spiral_jax.population`): ``learning_rate`` and
    ``entropy_cost`` replace the config's. The learning rate scales Adam's update
    (Adam's step is proportional to it, so this is Adam with that rate), which keeps the
    optimiser state's structure the same as a single run's.
    """
    entropy_cost = None if hparams is None else hparams["entropy_cost"]
    first_metrics, clipped = None, 0.0
    # A Python loop, not lax.scan: XLA's CPU backend runs convolutions (and their
    # gradients) inside a while loop ~25x slower than outside one.
    for _ in range(cfg.passes):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, agent, cfg, traj, rewards, discount, entropy_cost
        )
        grads = jax.lax.pmean(grads, AXIS)
        metrics["policy_grad_norm"] = optax.tree.norm(grads)
        clipped = clipped + (metrics["policy_grad_norm"] > cfg.max_grad_norm).astype(jnp.float32)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        if hparams is not None:
            updates = jax.tree.map(
                lambda u: u * (hparams["learning_rate"] / cfg.learning_rate).astype(u.dtype),
                updates,
            )
        params = optax.apply_updates(params, updates)
        first_metrics = metrics if first_metrics is None else first_metrics
    out = dict(first_metrics)
    if cfg.passes > 1:
        out.update({f"last_{k}": v for k, v in metrics.items()})
    out["policy_grad_clipped"] = clipped / cfg.passes
    return params, opt_state, out
