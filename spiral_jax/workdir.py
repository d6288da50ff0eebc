"""A run's working directory: checked before anything compiles, and the config it holds.

Paths go through `etils.epath`, so a workdir may be local or in a bucket (`gs://`,
`s3://`: the filesystem's client, e.g. `gcsfs`, must be installed). `check` fails at once,
in one line, for a workdir that is a file, cannot be written, or needs a client that is
missing. `check_config` compares the config with the `config.json` of a run being
resumed and refuses changes unless they are allowed.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from spiral_jax.experiment import ConfigError

CONFIG_FILE = "config.json"

# Top-level fields a resumed run may change freely: how long it runs and what it writes
# along the way, never what it computes. Any other change needs allow_change=True.
LOOP_FIELDS = frozenset({
    "num_train_steps", "log_every", "sample_every", "checkpoint_every",
    "keep_checkpoints", "eval_every", "eval_episodes", "data_dir", "multihost",
    "max_nonfinite_in_a_row",
})


def check(workdir: str | epath.PathLike) -> epath.Path:
    """The workdir as an `epath.Path`, created if needed; ConfigError (one line) if it
    cannot hold a run."""
    name = str(workdir)
    try:
        path = epath.Path(workdir)
    except KeyError:  # epath knows no such scheme
        raise ConfigError(f"--workdir={name}: unsupported scheme; use a local path, "
                          "gs://, s3:// or az://") from None
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--workdir={name} is a file, not a directory")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except ConfigError:
        raise
    except ImportError as e:  # e.g. "Please install gcsfs to access Google Storage"
        raise ConfigError(f"--workdir={name}: {e}") from None
    except (OSError, NotImplementedError) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise ConfigError(f"--workdir={name} cannot be written: {reason}") from None
    return path


def check_config(path: epath.Path, config: ml_collections.ConfigDict,
                 resuming: bool, allow_change: bool) -> None:
    """When resuming a run, ConfigError naming the fields that differ from its
    `config.json`, unless they are `LOOP_FIELDS` or `allow_change`. Then writes the
    config (process 0). A change of shapes is refused later, by the checkpoint."""
    file = path / CONFIG_FILE
    if resuming and file.exists():
        changed = differences(json.loads(file.read_text()), json.loads(to_json(config)))
        strict = {k: v for k, v in changed.items() if k.split(".")[0] not in LOOP_FIELDS}
        if strict and not allow_change:
            raise ConfigError(
                f"the config differs from the run in {path} ({_describe(strict)}); pass "
                "--allow_config_change to resume with the new values, or use a new --workdir"
            )
        if changed:
            print(f"config changes since the last invocation: {_describe(changed)}")
    if jax.process_count() > 1:  # every process has read the old file before it changes
        multihost_utils.sync_global_devices("config.json compared")
    if jax.process_index() == 0:
        file.write_text(to_json(config))


def to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def differences(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted field: (old value, new value)} for every field that both have and that
    differs. A field only one side has is not a change: it was added or removed by
    another version (an unknown field is refused when the config is built)."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(differences(a, b, f"{name}."))
        elif a != b:
            out[name] = (a, b)
    return out


def _describe(changes: dict[str, tuple[Any, Any]], n: int = 4) -> str:
    items = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()]
    more = f", and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
