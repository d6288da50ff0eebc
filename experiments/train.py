r"""Trains SPIRAL: `python -m experiments.train --config=NAME --workdir=DIR`.

    python -m experiments.train                                    # mnist5k, offline
    python -m experiments.train --config=mnist5k_conditional --max_minutes=60
    python -m experiments.train --config=celeba --workdir=runs/celeba --config.batch_size=32

`--config` is a name in `experiments/configs/` or a config file; `--config.FIELD=VALUE`
overrides any field. The same command resumes from the workdir's latest checkpoint;
Ctrl-C or SIGTERM saves one and exits. What a run writes: `spiral_jax/train.py`. Exit
codes: 0 finished, 75 stopped early (resumable), 2 bad input, 1 failure
(`spiral_jax/stops.py`).
"""

import asyncio
import os
import pathlib
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import configs
from spiral_jax import stops, train
from spiral_jax.experiment import ConfigError
from spiral_jax.stops import TrainingFailure

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path(configs.DEFAULT), "Config name or file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<config name>).")
_MAX_MINUTES = flags.DEFINE_float(
    "max_minutes", 0.0, "Stop and save after this many minutes, compilation included; 0 = never."
)
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume although the config differs from the workdir's config.json (shapes never may).",
)
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 60, "Seconds after which a lost process ends the others."
)


def main(argv):
    del argv
    config = _CONFIG.value
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    logging.get_absl_handler().addFilter(_quiet_background_saves)
    asyncio.BaseEventLoop.call_soon_threadsafe = _quiet_closed_loop(
        asyncio.BaseEventLoop.call_soon_threadsafe)
    if _MULTIHOST.value or config.multihost:
        _initialize_distributed()
    name = pathlib.Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    workdir = _WORKDIR.value or f"runs/{name}"
    try:
        result = train.train_and_evaluate(config, workdir, max_minutes=_MAX_MINUTES.value,
                                          allow_config_change=_ALLOW_CHANGE.value)
    except (ConfigError, FileNotFoundError) as e:  # before anything compiled
        _exit(e, stops.EXIT_BAD_INPUT)
    except TrainingFailure as e:  # the last good checkpoint is kept
        # Exit now, past the interpreter's shutdown: after a lost process JAX's would wait
        # for its heartbeat, then abort; after a failed save tensorstore's pending writes
        # would print tracebacks into orbax's closed event loop. Everything of the run is
        # already closed and flushed.
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(stops.EXIT_FAILURE)
    sys.exit(result.exit_code)


def _quiet_background_saves(record) -> bool:
    """Drops orbax's and asyncio's log records of a failed background save (each failed
    write logs a traceback, hundreds of lines for one full disk): the run reports the
    failure itself, in one line, and stops."""
    return not (record.name == "asyncio" or "/orbax/" in record.pathname)


def _quiet_closed_loop(call_soon_threadsafe):
    """After a failed background save, tensorstore's pending writes still call back into
    orbax's event loop, closed by then, and each call prints a traceback (one per
    array). Those callbacks have nothing left to do: on a closed loop they are dropped."""
    def call(loop, *args, **kwargs):
        if loop.is_closed():
            return None
        return call_soon_threadsafe(loop, *args, **kwargs)
    return call


def _initialize_distributed():
    """jax.distributed.initialize with the flags (TPU VMs and SLURM need none of them)."""
    try:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   heartbeat_timeout_seconds=_HEARTBEAT.value)
    except (ValueError, RuntimeError) as e:
        _exit(f"--multihost: {str(e).splitlines()[0]} (on machines that JAX cannot detect, "
              "pass --coordinator_address, --num_processes and --process_id)",
              stops.EXIT_BAD_INPUT)


def parse_flags(argv):
    try:
        return flags.FLAGS(configs.resolve_argv(argv))
    except (flags.Error, ValueError) as e:  # a bad flag or field value, an unknown config
        _exit(e, stops.EXIT_BAD_INPUT)
    except (AttributeError, KeyError) as e:  # ml_collections: --config.FIELD it lacks
        text = str(e)
        name = (re.findall(r"'([\w.]+)", text) or [text])[0]
        hint = re.findall(r'Did you mean \\?"([\w.]+)', text)
        given = [a.split("=")[0] for a in argv
                 if a.startswith("--config.") and a.split("=")[0].split(".")[-1] == name]
        _exit(f"{given[0] if given else name}: the config has no field {name!r}"
              + (f" (did you mean {hint[0]!r}?)" if hint else ""), stops.EXIT_BAD_INPUT)


def _exit(error: Exception | str, code: int):
    sys.stderr.write(f"error: {error}\n")
    sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
