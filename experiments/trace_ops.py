"""Reading a `jax.profiler` trace of compiled XLA programs on a CPU: which JAX
operation each traced XLA operation comes from (`experiments.profile_learner`,
`experiments.profile_step`)."""

from __future__ import annotations

import re


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
