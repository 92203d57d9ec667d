"""Plumbing shared by the `launch/` scripts: one-line input errors, quiet logs, the JAX
compilation cache.

A script checks all its inputs before it loads a model and answers bad input with one
line, `error: <what, where, what to do>`, and exit status 2, with no traceback
(`--verbosity=1` or RSTAR_TRACEBACK=1 shows it). Everything else (a bug) keeps its
traceback. Importing this module imports neither JAX nor any model code, so a script
that fails on its input fails in about a second.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import types
from typing import Callable, Iterator

EXIT_USAGE = 2
TRACEBACK_ENV = "RSTAR_TRACEBACK"
CACHE_ENV = "RSTAR_JAX_CACHE_DIR"


class UsageError(Exception):
    """Bad input to a command: a flag, a config value, a path or a file's content."""


def input_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong" (raised by the library's validators)."""
    from rstar_jax.data.benchmarks import BenchmarkFormatError
    from rstar_jax.models.hf_io import CheckpointError
    from rstar_jax.search.host_tree import TreeFormatError
    return (UsageError, BenchmarkFormatError, CheckpointError, TreeFormatError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _show_traceback() -> bool:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return True
    try:
        from absl import flags
        return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present
    except Exception:
        return False


def fail(message: str) -> None:
    """Print `error: message` (one line) to stderr and exit with status 2."""
    if _show_traceback():
        traceback.print_exc()
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _innermost_text(exc: BaseException) -> str:
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    return str(exc.args[0]) if exc.args else str(exc)


def _message(exc: BaseException) -> str:
    if isinstance(exc, (KeyError, AttributeError)) and exc.args:
        # ml_collections: "'name'\nDid you mean ..." for an override of a missing field.
        detail = _innermost_text(exc).replace("\n", " ").strip()
        return (f"a config override names a field that does not exist: {detail} "
                "(see the config file for its fields)")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError)) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


@contextlib.contextmanager
def config_flag_errors() -> Iterator[None]:
    """Around `config_flags.DEFINE_config_file(...)` with a default file: ml_collections
    applies `--config.a.b=value` overrides at definition time, so a bad override fails
    there; this turns that into the one-line error."""
    try:
        yield
    except (KeyError, AttributeError, ValueError, TypeError) as exc:
        fail(_message(exc))


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Input errors raised inside the block end the command with the one-line error."""
    try:
        yield
    except input_error_types() as exc:
        fail(_message(exc))


@contextlib.contextmanager
def validating() -> Iterator[None]:
    """Around the checks of a command's inputs: a ValueError, TypeError or KeyError raised
    by a validator (config settings, problem files, tree files) is a UsageError."""
    try:
        yield
    except input_error_types():
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args
                         else str(exc)) from exc


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with the one-line error (absl itself exits 1 with two lines)."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as exc:
        fail(f"{exc}; run with --helpshort to see the flags")
    except (KeyError, AttributeError, ValueError, TypeError) as exc:   # config overrides
        fail(_message(exc))
    raise AssertionError("unreachable")


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)` with one-line errors for bad flags and bad input."""
    from absl import app

    def guarded(argv):
        with input_errors():
            return main(argv)

    app.run(guarded, flags_parser=parse_flags)


def quiet_logging() -> None:
    """WARNING unless --verbosity was given: orbax logs every checkpoint step at INFO, and
    the progress bar and metrics file already say what a user needs."""
    from absl import flags, logging
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rstar_jax", "jax_compilation_cache")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (a fresh process then reuses compiled
    steps: on the 2-core CPU a cold tiny search went from 57 s to 23 s).

    The directory is `path`, else $RSTAR_JAX_CACHE_DIR, else ~/.cache/rstar_jax/...;
    RSTAR_JAX_CACHE_DIR="" (empty) turns the cache off. Returns the directory used.
    """
    import jax
    path = path if path is not None else os.environ.get(CACHE_ENV, default_cache_dir())
    if not path:
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every executable: on CPU most compiles are short but there are many.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def define_distributed_flags() -> None:
    """--distributed --coordinator_address --num_processes --process_id (absl scripts)."""
    from absl import flags
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "JAX distributed runtime: auto starts it for the flags below or a "
                      "detected SLURM / Open MPI / TPU-pod launch; on always; off never")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordinator (explicit multi-process set-up)")
    flags.DEFINE_integer("num_processes", None, "processes in the run (with --coordinator_address)")
    flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)")


def add_distributed_arguments(parser) -> None:
    """The same four options for argparse scripts (the benchmarks)."""
    parser.add_argument("--distributed", default="auto", choices=["auto", "on", "off"],
                        help="JAX distributed runtime (see rstar_jax/distributed.py)")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)


def start_distributed(mode: str = "auto", coordinator_address: str | None = None,
                      num_processes: int | None = None, process_id: int | None = None, *,
                      announce: bool = True):
    """Start JAX's distributed runtime when this is one process of several (a bad flag
    is a UsageError); returns `distributed.Process`. `announce` prints this process's
    place and devices to stderr (which starts the JAX backend)."""
    from rstar_jax import distributed
    try:
        distributed.check_flags(mode, coordinator_address, num_processes, process_id)
    except ValueError as e:
        raise UsageError(str(e)) from e
    process = distributed.initialize(mode, coordinator_address, num_processes, process_id)
    if process.multi and announce:
        import jax
        print(f"process {process.index} of {process.count}: {jax.local_device_count()} local "
              f"devices, {jax.device_count()} in all", file=sys.stderr, flush=True)
    return process


def start_distributed_from_args(args):
    """`start_distributed` from an argparse namespace (add_distributed_arguments), without
    starting the JAX backend (the benchmarks time what comes before it)."""
    return start_distributed(args.distributed, args.coordinator_address, args.num_processes,
                             args.process_id, announce=False)


def check_distributed_flags() -> None:
    """The distributed flags' UsageError before any work (absl scripts that define them)."""
    from absl import flags
    if "process_id" not in flags.FLAGS:
        return
    from rstar_jax import distributed
    f = flags.FLAGS
    try:
        distributed.check_flags(f.distributed, f.coordinator_address, f.num_processes,
                                f.process_id)
    except ValueError as e:
        raise UsageError(str(e)) from e


def setup_command():
    """What every launch script does first once its flags are parsed: quiet logs, the
    compilation cache, and (for scripts with the distributed flags) the multi-process
    runtime. Returns `distributed.Process`."""
    from absl import flags
    quiet_logging()
    enable_compilation_cache()
    if "process_id" in flags.FLAGS:
        f = flags.FLAGS
        return start_distributed(f.distributed, f.coordinator_address, f.num_processes,
                                 f.process_id)
    from rstar_jax import distributed
    return distributed.Process()


def check_dir(path: str | None, flag: str, *, must_contain: tuple[str, ...] = (),
              what: str = "directory") -> str:
    """An existing directory (with `must_contain` files), or a UsageError naming `flag`."""
    if not path:
        raise UsageError(f"--{flag} is required")
    full = os.path.expanduser(path)
    if not os.path.isdir(full):
        raise UsageError(f"--{flag} {path}: no such {what}")
    for name in must_contain:
        if not os.path.exists(os.path.join(full, name)):
            raise UsageError(f"--{flag} {path}: no {name} there; expected a {what}")
    return full


def check_file(path: str | None, flag: str, *, what: str = "file") -> str:
    if not path:
        raise UsageError(f"--{flag} is required")
    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        raise UsageError(f"--{flag} {path}: no such {what}")
    return full


def check_writable_parent(path: str | None, flag: str) -> str:
    """A path whose directory exists or can be created."""
    if not path:
        raise UsageError(f"--{flag} is required")
    full = os.path.abspath(os.path.expanduser(path))
    parent = os.path.dirname(full)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.access(probe, os.W_OK):
        raise UsageError(f"--{flag} {path}: {probe} is not writable")
    return full


def define_training_flags(config_hint: str, data_help: str,
                          init_help: str) -> types.SimpleNamespace:
    """--config --data --init --out --tokenizer --progress; read `.value` after parsing."""
    from absl import flags
    from ml_collections import config_flags
    define_distributed_flags()
    return types.SimpleNamespace(
        config=config_flags.DEFINE_config_file("config", None, config_hint, lock_config=True),
        data=flags.DEFINE_string("data", None, data_help),
        init=flags.DEFINE_string("init", None, init_help),
        out=flags.DEFINE_string("out", None, "output directory"),
        tokenizer=flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: --init)"),
        progress=flags.DEFINE_bool("progress", True, "show a progress bar"),
    )
