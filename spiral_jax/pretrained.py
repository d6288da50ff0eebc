"""Pretrained agents kept in the repository, loaded by name.

Each agent is a folder `pretrained/<name>/` at the repository's root holding only what
painting needs, so that it is small enough for git:

    config.json      the config it was trained with (as experiments.train writes it)
    params.msgpack   the policy parameters it paints with (the run's parameter average
                     when it kept one), float32, `flax.serialization` msgpack
    info.json        the step and checkpoint it came from, how it was made, the number
                     of parameters, and the SHA-256 of params.msgpack (checked on load)

`export` writes one from a trained run (`python -m experiments.export_pretrained`);
`load` builds the run's experiment from config.json and restores the parameters into
it, checked against the hash and against the shapes the config gives. `python -m
experiments.paint --agent=NAME` paints with one. The folders live in the checkout, not
in the installed package (`pip install .` installs the library only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
"""Where the agents' folders are: `pretrained/` beside `spiral_jax/` in the checkout."""

CONFIG, PARAMS, INFO = "config.json", "params.msgpack", "info.json"

AGENTS: dict[str, str] = {
    "mnist5k_conditional": "paints the digit it is shown "
                           "(experiments/configs/mnist5k_conditional.py)",
    "mnist5k": "paints digit-like strokes from noise (experiments/configs/mnist5k.py)",
}
"""Pretrained agent name -> what it does (and the config it was trained with)."""


def folder(name: str, root: Path = PRETRAINED_DIR) -> Path:
    """The folder of pretrained agent `name`: ValueError for an unknown name,
    FileNotFoundError (one line) if this checkout does not hold it."""
    if name not in AGENTS:
        raise ValueError(f"unknown pretrained agent {name!r}; available: {', '.join(AGENTS)}")
    path = Path(root) / name
    missing = [f for f in (CONFIG, PARAMS, INFO) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"pretrained agent {name!r} is not in this checkout ({path} lacks "
            f"{', '.join(missing)}); paint with a run of your own: --checkpoint=DIR"
        )
    return path


def is_pretrained(path: Path) -> bool:
    """Whether `path` is a pretrained agent's folder (rather than a training run)."""
    return (Path(path) / PARAMS).is_file() and (Path(path) / INFO).is_file()


def read_info(path: Path) -> dict[str, Any]:
    """The agent's info.json."""
    return json.loads((Path(path) / INFO).read_text())


def export(config_json: str, params: Any, out: Path, *, step: int, source: str,
           made_with: str, averaged: bool) -> dict[str, Any]:
    """Writes a pretrained agent's folder `out` (module docstring) and returns its info.

    `config_json`: the run's config.json text; `params`: the policy parameters to paint
    with; `step` and `source`: the checkpoint they came from; `made_with`: a line on how
    the run was trained; `averaged`: whether they are the run's parameter average."""
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
    data = flax.serialization.to_bytes(host)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "step": int(step),
        "source": source,
        "params": "the parameter average (learner.ema_decay)" if averaged
                  else "the learner's parameters",
        "num_parameters": int(sum(x.size for x in jax.tree.leaves(host))),
        "params_bytes": len(data),
        "params_sha256": hashlib.sha256(data).hexdigest(),
        "made_with": made_with,
    }
    (out / CONFIG).write_text(config_json)
    (out / PARAMS).write_bytes(data)
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def verify(path: Path) -> bytes:
    """The bytes of `path/params.msgpack`; ValueError (one line) unless they match the
    SHA-256 in info.json. Cheap: callers check before anything compiles."""
    path = Path(path)
    data = (path / PARAMS).read_bytes()
    expected = read_info(path).get("params_sha256")
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{path / PARAMS} does not match the SHA-256 in {path / INFO}: "
                         "the file is damaged; restore it from git")
    return data


def load_params(path: Path, like: Any) -> Any:
    """The parameters in `path/params.msgpack`, in the structure of `like` (the policy
    parameters a fresh experiment of the agent's config initialises); ValueError (one
    line) if the file does not match its hash or its shapes differ from `like`'s."""
    path = Path(path)
    data = verify(path)
    try:
        params = flax.serialization.from_bytes(like, data)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path / PARAMS} does not fit its config.json: "
                         f"{str(e).splitlines()[0]}") from e
    for (where, got), want in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree.leaves(like), strict=True):
        if np.shape(got) != np.shape(want):
            raise ValueError(f"{path / PARAMS}: {jax.tree_util.keystr(where)} has shape "
                             f"{np.shape(got)}, its config.json gives {np.shape(want)}")
    return params
