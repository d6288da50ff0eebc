r"""python -m experiments.bench_convs

XLA's own convolution against `spiral_jax.cpu_conv`'s form of the same conv, in
isolation, at the sizes the agents' learners run them: the torso's 5x5 conv of the
canvas (`conv_few_channels`) and the decoders' final 3x3 conv to one logit per cell
(`narrow_conv`). Each is timed forward, and for the gradients the learner takes (the
torso conv's kernel gradient only: its input is the observation; both of the final
conv's), alternately, as the best of --rounds calls, with the ratio XLA / cpu_conv.

A second table times the two forms of the 4x4 stride-2 convs' kernel gradient
(`cpu_conv.strided_kernel_grad`), space-to-depth and row pairs, at the agents' and
D's sizes, and says which one `strided_kernel_grad` takes there.

    python -m experiments.bench_convs --rounds=10

The process keeps freed memory as training does (`xla_cpu.keep_host_memory`), so that
no call pays for faulting in its buffers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spiral_jax import cpu_conv, xla_cpu

_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed calls of each function (the best counts).")

# (what, input shape, kernel shape, which gradients the learner takes)
CASES = (
    ("torso 5x5, mnist5k learner", (288, 32, 32, 1), (5, 5, 1, 16), "kernel"),
    ("torso 5x5, paper learner (batch 16)", (304, 64, 64, 1), (5, 5, 1, 32), "kernel"),
    ("torso 5x5, paper size, RGB", (304, 64, 64, 3), (5, 5, 3, 32), "kernel"),
    ("final 3x3, mnist5k learner", (288, 16, 16, 16), (3, 3, 16, 1), "both"),
    ("final 3x3, paper learner (batch 16)", (304, 32, 32, 32), (3, 3, 32, 1), "both"),
)

# (what, input shape, output channels) of the 4x4 stride-2 convs' kernel gradients.
STRIDED_CASES = (
    ("encoder's 1st, mnist5k learner", (288, 32, 32, 16), 16),
    ("encoder's 2nd, mnist5k learner", (288, 16, 16, 16), 16),
    ("encoder's 1st, paper learner (batch 16)", (304, 64, 64, 32), 32),
    ("encoder's 2nd, paper learner (batch 16)", (304, 32, 32, 32), 32),
    ("mnist5k D's 1st (64 images)", (64, 32, 32, 1), 16),
    ("mnist5k D's 2nd", (64, 16, 16, 16), 32),
    ("mnist5k D's 3rd", (64, 8, 8, 32), 64),
)


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def gradients(conv: Callable[..., jax.Array], which: str) -> Callable[..., Any]:
    """(x, kernel, g) -> the vjp of g: the kernel's, or the input's and the kernel's."""
    def fn(x: jax.Array, kernel: jax.Array, g: jax.Array) -> Any:
        if which == "kernel":
            return jax.vjp(lambda k: conv(x, k), kernel)[1](g)[0]
        return jax.vjp(conv, x, kernel)[1](g)
    return fn


def best_of(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Each function's fastest call in seconds, calling them in turn (after one call)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def forward(conv: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    return lambda x, kernel, g: conv(x, kernel)


def time_case(x_shape: tuple[int, ...], k_shape: tuple[int, ...], which: str,
              rounds: int) -> list[tuple[str, float, float, float]]:
    """[(pass, XLA s, cpu_conv s, max relative difference)] for the forward and the
    gradients of one conv."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], x_shape)
    kernel = jax.random.normal(keys[1], k_shape) / np.sqrt(np.prod(k_shape[:3]))
    g = jax.random.normal(keys[2], (*x_shape[:3], k_shape[3]))
    ours = cpu_conv.conv_few_channels if which == "kernel" else cpu_conv.narrow_conv
    rows = []
    for label, make in (("forward", forward),
                        ("kernel grad" if which == "kernel" else "both grads",
                         lambda conv: gradients(conv, which))):
        jitted = {"xla": xla_cpu.jit(make(xla_conv)), "ours": xla_cpu.jit(make(ours))}
        want, got = (jax.tree.leaves(f(x, kernel, g)) for f in jitted.values())
        diff = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                   for a, b in zip(want, got, strict=True))
        t = best_of({n: functools.partial(f, x, kernel, g) for n, f in jitted.items()}, rounds)
        rows.append((label, t["xla"], t["ours"], diff))
    return rows


def time_strided(x_shape: tuple[int, ...], c_out: int, rounds: int
                 ) -> tuple[float, float, float]:
    """(space-to-depth s, row pairs s, max relative difference) of one strided conv's
    kernel gradient."""
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], x_shape)
    g = jax.random.normal(keys[1], (x_shape[0], x_shape[1] // 2, x_shape[2] // 2, c_out))
    forms = {"s2d": xla_cpu.jit(cpu_conv._space_to_depth_kernel_grad),
             "rows": xla_cpu.jit(cpu_conv._row_pairs_kernel_grad)}
    a, b = (f(x, g) for f in forms.values())
    diff = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    t = best_of({n: functools.partial(f, x, g) for n, f in forms.items()}, rounds)
    return t["s2d"], t["rows"], diff


def main(argv: list[str]) -> None:
    del argv
    if _ROUNDS.value < 1:
        raise SystemExit(f"--rounds={_ROUNDS.value}: must be >= 1")
    xla_cpu.keep_host_memory()  # before the first computation
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}; best of {_ROUNDS.value}")
    print("| conv | input | kernel | pass | XLA ms | cpu_conv ms | XLA / cpu_conv "
          "| max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for what, x_shape, k_shape, which in CASES:
        for label, xla_s, ours_s, diff in time_case(x_shape, k_shape, which, _ROUNDS.value):
            print(f"| {what} | {x_shape} | {k_shape} | {label} | {xla_s * 1e3:.1f} | "
                  f"{ours_s * 1e3:.1f} | {xla_s / ours_s:.2f}x | {diff:.1e} |", flush=True)
    print("\n| 4x4 stride-2 conv, kernel gradient | input | C_out | space-to-depth ms "
          "| row pairs ms | s2d / rows | taken | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for what, x_shape, c_out in STRIDED_CASES:
        s2d_s, rows_s, diff = time_strided(x_shape, c_out, _ROUNDS.value)
        taken = "row pairs" if cpu_conv.takes_row_pairs(x_shape) else "space-to-depth"
        print(f"| {what} | {x_shape} | {c_out} | {s2d_s * 1e3:.2f} | {rows_s * 1e3:.2f} | "
              f"{s2d_s / rows_s:.2f}x | {taken} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    app.run(main)
