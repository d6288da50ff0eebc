"""Helpers of the profiling and bench scripts, without flags of their own (so that
tests can import them): each XLA operation's time in a `jax.profiler` trace, which JAX
operation it comes from and which phase of the train step that is (`profile_learner`,
`profile_step`); a call's page faults and system time (`bench_torch`)."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import resource
import tempfile
from collections.abc import Callable
from typing import Any

import jax

# Opcodes of operations that contain others: a trace event of one covers the events of
# the operations inside it, so profiles leave it out.
CONTAINERS = ("conditional", "while", "call")


def op_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (output shape, JAX op_name) of a compiled module's text;
    a fusion without metadata takes the last op_name inside its computation."""
    inside: dict[str, str] = {}
    for block in hlo_text.split("\n\n"):
        head = re.match(r"%?([\w.\-]+) ", block.strip())
        names = re.findall(r'op_name="([^"]+)"', block)
        if head and names:
            inside[head.group(1)] = names[-1]
    sources = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
        if not m:
            continue
        name = re.search(r'op_name="([^"]+)"', line)
        calls = re.search(r"calls=%([\w.\-]+)", line)
        source = name.group(1) if name else inside.get(calls.group(1), "") if calls else ""
        sources[m.group(1)] = (m.group(2), source)
    return sources


def op_times(run: Callable[[], Any], hlo_text: str
             ) -> tuple[collections.Counter[str], dict[str, tuple[str, str]]]:
    """Microseconds of each operation of `hlo_text` (a compiled module's text) in a
    `jax.profiler` trace of `run()`, which must run that module, and the operations'
    `op_sources`. Operations that contain others (`CONTAINERS`) are left out: their
    events cover their contents'."""
    codes, sources = opcodes(hlo_text), op_sources(hlo_text)
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            run()
        (path,) = glob.glob(f"{logdir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    times: collections.Counter[str] = collections.Counter()
    for e in events:
        name = e.get("name")
        if e.get("ph") == "X" and name in sources and codes.get(name) not in CONTAINERS:
            times[name] += e["dur"]
    return times, sources


def short_source(source: str) -> str:
    """An op_name without its jit(...) prefix and the agent's class name, for tables."""
    return re.sub(r"^jit\([^)]*\)/", "", source).replace("SpiralAgent.", "")


def top_operations(times: collections.Counter[str], sources: dict[str, tuple[str, str]],
                   calls: int, unit: str, top: int) -> list[str]:
    """Markdown rows of the `top` operations of `op_times`: ms per `unit` (over `calls`
    traced calls), share of the traced time, name, output shape and short source."""
    total = sum(times.values())
    rows = [f"| ms a {unit} | share | operation | output | from |", "|---|---|---|---|---|"]
    for name, us in times.most_common(top):
        shape, source = sources[name]
        rows.append(f"| {us / calls / 1e3:.1f} | {100 * us / total:.1f} % | {name} "
                    f"| {shape.split('{')[0]} | {short_source(source)[:90]} |")
    return rows


def phase_of(source: str) -> str:
    """The phase of an operation, from the JAX op_name it comes from."""
    if "Discriminator" in source:
        return "critic"
    if "SpiralAgent.unroll" in source:
        part = ("location decoders" if "_decoder" in source else
                "torso" if "_encode" in source else
                "LSTM core" if "/core/" in source else "other heads")
        return f"policy {'backward' if 'transpose(jvp(' in source else 'forward'}, {part}"
    if "while/body" in source:
        return "rollout"
    return "other"


def opcodes(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> opcode. (The opcode is the first word after the shape
    that opens a parenthesis; a shape ends with `]`, a layout's `}` or a tuple's `)`.)"""
    found = re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?[\]})] ([a-z][\w\-]*)\(",
                       hlo_text, re.M)
    return dict(found)


def call_cost(fn: Callable[[], Any]) -> tuple[int, float]:
    """Minor page faults and system CPU seconds of one call of `fn` (this process's).
    Both learners' large buffers are mapped afresh on every call, and the kernel's
    filling of those pages shows as system time (docs/speed.md, page faults)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    jax.block_until_ready(fn())
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime
