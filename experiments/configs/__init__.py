"""Training configs: `get_config()` in each file returns an `ml_collections.ConfigDict`.

`--config=NAME` names a file here (`experiments.train` resolves it); `--config=PATH`
takes any config file.
"""

from __future__ import annotations

import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT = "mnist5k"


def names() -> list[str]:
    """The configs in this directory."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def path(name: str) -> str:
    """The file of config `name`, or `name` itself if it is a path to a .py file;
    ValueError naming the available configs otherwise."""
    if name.endswith(".py") or "/" in name:
        return name
    if name not in names():
        raise ValueError(
            f"unknown config {name!r}; available: {', '.join(names())} (or a path to a "
            f"config file)"
        )
    return str(CONFIG_DIR / f"{name}.py")


def resolve_argv(argv: list[str]) -> list[str]:
    """argv with `--config=NAME` (or `--config NAME`) replaced by the config's path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = path(out[i + 1])
    return out
