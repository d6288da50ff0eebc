"""experiments.profiling: HLO text read for the sources and phases of traced operations,
and the page faults of a call."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp

from experiments import profiling

_HLO = """\
%fused_computation.1 (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %m = f32[4]{0} maximum(%p, %p), metadata={op_name="jvp(SpiralAgent.unroll)/torso/max"}
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %fusion.1 = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1
  %cond.2 = (f32[4]{0}) conditional(%a), metadata={op_name="jit(train_step)/cond"}
  %while.4 = (s32[], f32[4]{0}) while(%t), condition=%c, body=%b
  %c.5 = f32[] constant(1)
  ROOT %dot.3 = f32[4]{0} dot(%a, %a), metadata={op_name="transpose(jvp(Discriminator))/dot"}
}
"""


def test_operations_are_named_by_their_source_and_opcode():
    sources = profiling.op_sources(_HLO)
    # A fusion without metadata takes the op_name inside its computation.
    assert sources["fusion.1"] == ("f32[4]{0}", "jvp(SpiralAgent.unroll)/torso/max")
    assert sources["dot.3"] == ("f32[4]{0}", "transpose(jvp(Discriminator))/dot")
    codes = profiling.opcodes(_HLO)
    assert codes["fusion.1"] == "fusion" and codes["cond.2"] == "conditional"
    assert codes["while.4"] == "while" and codes["c.5"] == "constant"
    assert codes["dot.3"] == "dot"


def test_phases():
    unroll = "jit(train_step)/{}(SpiralAgent.unroll){}/SpiralAgent."
    cases = {
        unroll.format("jvp", "") + "_encode/torso/conv/max": "policy forward, torso",
        unroll.format("transpose(jvp", ")") + "_heads/heads/end_decoder/pad":
            "policy backward, location decoders",
        "jit(train_step)/transpose(jvp(SpiralAgent.unroll))/core/while/body/dot":
            "policy backward, LSTM core",
        unroll.format("jvp", "") + "_heads/heads/flag/dot": "policy forward, other heads",
        "jit(train_step)/transpose(jvp(transpose(jvp(jvp(Discriminator)))))/conv_1": "critic",
        "jit(train_step)/vmap()/while/body/closed_call/SpiralAgent.step/x": "rollout",
        "jit(train_step)/add": "other",
        "": "other",
    }
    for source, phase in cases.items():
        assert profiling.phase_of(source) == phase, source


def test_a_call_that_writes_fresh_memory_counts_its_page_faults():
    size = 64 * 2**20  # above glibc's largest mmap threshold: mapped afresh each call

    def touch() -> None:
        b"\x01" * size  # malloc'd and written (numpy would ask for huge pages)

    faults, system = profiling.call_cost(touch)
    assert faults >= 0.9 * size / 4096
    assert system >= 0.0
    idle_faults, _ = profiling.call_cost(lambda: None)
    assert idle_faults < 0.1 * size / 4096


def test_op_times_leave_out_containers_and_short_sources_drop_prefixes():
    @jax.jit
    def f(x):
        return jax.lax.cond(x.sum() > 0, lambda y: jnp.sin(y) * 2, lambda y: y + 1, x)

    x = jnp.ones((256, 256))
    hlo = f.lower(x).compile().as_text()
    times, sources = profiling.op_times(lambda: jax.block_until_ready(f(x)), hlo)
    codes = profiling.opcodes(hlo)
    assert "conditional" in codes.values()
    assert times and set(times) <= set(sources)
    assert all(codes[name] not in profiling.CONTAINERS for name in times)
    assert profiling.short_source("jit(train_step)/jvp(SpiralAgent.unroll)/x") == (
        "jvp(unroll)/x")


def test_top_operations_rows_give_time_per_call_and_share():
    times = collections.Counter({"dot.1": 3000, "copy.2": 1000})
    sources = {"dot.1": ("f32[4,4]{1,0}", "jit(step)/SpiralAgent._encode/dot"),
               "copy.2": ("f32[8]{0}", "")}
    rows = profiling.top_operations(times, sources, calls=2, unit="step", top=1)
    assert rows == ["| ms a step | share | operation | output | from |",
                    "|---|---|---|---|---|",
                    "| 1.5 | 75.0 % | dot.1 | f32[4,4] | _encode/dot |"]
