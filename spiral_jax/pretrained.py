"""Pretrained agents kept in the repository, loaded by name.

Each agent is a folder `pretrained/<name>/` at the repository's root laid out as a
training run's workdir, so the code that loads runs loads it too
(`spiral_jax.evaluate.load_run`): `config.json`, the config it was trained with, and
`checkpoints/<step>/`, its checkpoint. `python -m experiments.paint --agent=NAME` paints
with one. The folders live in the checkout, not in the installed package (`pip install
.` installs the library only).
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
"""Where the agents' folders are: `pretrained/` beside `spiral_jax/` in the checkout."""

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
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"pretrained agent {name!r} is not in this checkout ({path / 'config.json'} is "
            "missing); paint with a run of your own: --checkpoint=DIR"
        )
    return path
