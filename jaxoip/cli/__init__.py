"""Shared plumbing of the `python -m jaxoip NAME` commands (installed: `jaxoip NAME`).

Importing this module (`python -m jaxoip` does so before it imports a command) makes GPU results
bit-for-bit repeatable: it adds `--xla_gpu_deterministic_ops=true` to XLA_FLAGS before JAX starts a
backend. Library users who need the same on a GPU set that flag themselves (see the README).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxoip.errors import JaxoipError, OutputError

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def _backend_started() -> bool:
    """Whether JAX has started a backend: XLA reads XLA_FLAGS then, not when `jax` is imported."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xla_bridge, "_backends", None))


def _deterministic_xla():
    if _backend_started():  # Too late to change XLA's flags; the caller decided.
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}".strip()


_deterministic_xla()


def cache_dir() -> Path:
    """The commands' caches: $JAXOIP_CACHE_DIR, else the user's cache folder. It holds JAX's persistent
    compilation cache, and in `passes/` the passes over data sets (`jaxoip.passes`)."""
    if os.environ.get("JAXOIP_CACHE_DIR"):
        return Path(os.environ["JAXOIP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxoip" / "xla"


def enable_caches(enabled: bool = True) -> Path | None:
    """Turns on JAX's persistent compilation cache for this process, so a second run skips compiling, and the
    pass cache, so a second run reads its passes over a data set back (`jaxoip.passes`).

    Every program is cached, however fast it compiled. Returns the folder, or None when disabled or
    when the folder cannot be created (then the command runs uncached).
    """
    from jaxoip.passes import use_pass_cache

    use_pass_cache(None)
    if not enabled:
        return None
    import jax

    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"warning: caches disabled ({path}: {e.strerror})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    use_pass_cache(path / "passes")
    return path


def add_precision_flag(parser: argparse.ArgumentParser, what: str = "every compiled pass"):
    """--precision, for a command whose config has no precision field."""
    from jaxoip.numerics import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help=f"matmul precision of {what}: {PRECISION_HELP}",
    )


def add_engine_flags(parser: argparse.ArgumentParser, precision: bool = True):
    """--precision (unless the command's config declares it), --no-cache and --no-progress."""
    if precision:
        add_precision_flag(parser)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the caches of compiled programs and data passes ($JAXOIP_CACHE_DIR, else ~/.cache/jaxoip/xla)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


def check_backend():
    """Starts JAX's backend at once, so that a platform it cannot start is one line naming it, not a later failure
    (e.g. 'cannot restore parameters')."""
    import jax

    try:
        jax.devices()
    except RuntimeError as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        platforms = os.environ.get("JAX_PLATFORMS")
        where = f" (JAX_PLATFORMS={platforms})" if platforms is not None else ""
        raise JaxoipError(f"JAX cannot start a backend{where}: {first[:200]}") from None


# What --model takes, in every command's --help.
MODEL_HELP = "checkpoint folder, .keras/.h5 file, or file.py:factory (a function returning jaxoip.from_nnx(...))"


def _memory_options(main: Callable) -> str:
    """The options that size a command's work: its module's `MEMORY_OPTIONS`."""
    return getattr(sys.modules.get(getattr(main, "__module__", ""), None), "MEMORY_OPTIONS", "batch or chunk size")


def run(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    memory_options: str | None = None,
) -> int:
    """Runs a command; a user error becomes one line on stderr and exit status 2.

    `memory_options`: the command's options that size its work, named when it runs out of memory
    (default: the `MEMORY_OPTIONS` of `main`'s module).
    """
    memory_options = memory_options or _memory_options(main)
    try:
        return int(main(argv) or 0)
    except JaxoipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # The file system refused a path: a name too long, a symlink loop, a full disk.
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except Exception as e:
        from jaxoip.models.memory import is_out_of_memory

        if not is_out_of_memory(e):
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        print(f"error: out of memory ({first[:200]}); use a smaller {memory_options}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return 130


# A command's full collections (generation 2) happen after this many collections of generation 1 (Python's
# default: 10): a command's cycles are few and short-lived, its long-lived objects mostly modules.
COMMAND_GC_THRESHOLD = 100


class _Stdout:
    """The standard output, whose write errors (`> /dev/full`) are one `OutputError`, not a traceback."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _checked(self, method, *args):
        try:
            return method(*args)
        except OSError as e:
            raise OutputError(f"cannot write the standard output: {e.strerror or e}") from None

    def write(self, text):
        return self._checked(self._stream.write, text)

    def flush(self):
        return self._checked(self._stream.flush)


def execute(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    memory_options: str | None = None,
):
    """The process entry of a command: `run`, then exit with its status.

    A standard output that cannot be written is a failure too (one line on stderr). After a failure
    the process ends without the interpreter's teardown (`os._exit`, output flushed):
    Orbax's and TensorStore's background threads otherwise print "Event loop is closed" tracebacks
    under the one-line error when a damaged checkpoint was being read.

    The process's heap is mostly the modules of JAX, Flax and the writers, which Python's cyclic collector
    walks again at each full pass and once more at exit (about 0.5 s each way in a small scan): full passes
    are made rarer (`COMMAND_GC_THRESHOLD`) and the heap is frozen before the exit.
    """
    sys.stdout = _Stdout(sys.stdout)
    gc.set_threshold(*gc.get_threshold()[:2], COMMAND_GC_THRESHOLD)
    try:
        code = run(main, argv, memory_options)
    except SystemExit as e:  # argparse's --help and option errors.
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    try:
        sys.stdout.flush()
    except OutputError as e:  # Buffered text is written only now: the run's report is lost.
        print(f"error: {e}", file=sys.stderr)
        code = code or 2
    if code != 0:
        sys.stderr.flush()
        os._exit(code)
    gc.freeze()  # The exit's teardown frees by reference counts and skips the cyclic walk of every module.
    raise SystemExit(code)


def int_list(text: str) -> list[int]:
    """Parses '0-3,7,10-11' into [0, 1, 2, 3, 7, 10, 11]."""
    out = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise argparse.ArgumentTypeError(f"reversed range {part!r} in {text!r}; write {hi}-{lo}")
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers or ranges like 0-3,7; got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"empty list {text!r}")
    return out


def add_data_dir(parser: argparse.ArgumentParser, input_scale: bool = True):
    """--data-dir (MNIST) and --data (any image set `jaxoip.load_images` reads); --input-scale for commands
    that take a --model."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four MNIST IDX files (default: $JAXOIP_DATA_DIR, else tensorflow-datasets if installed)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own labelled images instead of MNIST: a Keras-style .npz (x_train, y_train, x_test, y_test), a "
        "folder of IDX files (Fashion-MNIST, KMNIST), a CIFAR-10/100 python folder, or a folder of class "
        "subfolders of PNG/JPEG images",
    )
    if not input_scale:
        return
    parser.add_argument(
        "--input-scale",
        default=None,
        metavar="SCALE",
        type=_input_scale,
        help="how pixels (0-255) map to the inputs of a --model without its own Rescaling/Normalization layers: "
        "0..1, -1..1, 0..255, imagenet (mean/std on [0, 1]), or MEAN,STD on the [0, 1] scale, per channel "
        "M1/M2/M3,S1/S2/S3 (default: fitted on --data; a 28x28x1 model takes the study's MNIST standardization)",
    )


def _input_scale(text: str):
    from jaxoip.data.mnist import Standardization

    try:
        return Standardization.parse(text)
    except JaxoipError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def optional_data(args: argparse.Namespace, input_shape: tuple[int, ...], load: Callable | None = None):
    """(the images a scan may use, or None; a note to print when there are none). Data named by --data or
    --data-dir must fit the model's `input_shape`; MNIST found only through the environment is skipped, with
    the note saying why, when its shape differs: it does not stop the scan of another model.

    `load`: returns the images, already loading (`jaxoip.cli.scans.start_data`); default: loaded now."""
    from jaxoip.data.images import load_data
    from jaxoip.data.mnist import HOW_TO_ADD, check_data_shape

    data = load() if load is not None else load_data(args.data, args.data_dir, optional=True)
    if data is None:
        return None, f"note: no MNIST: data columns and exemplars skipped; add them with {HOW_TO_ADD}"
    if args.data is None and args.data_dir is None:
        try:
            return check_data_shape(data, input_shape), None
        except JaxoipError as e:
            return None, f"note: {e}: data columns and exemplars skipped; give --data PATH"
    return check_data_shape(data, input_shape), None


def data_paths(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The data inputs a command was given, by option, for `jaxoip._io.check_apart`."""
    from jaxoip.data.images import check_data_source
    from jaxoip.data.mnist import resolve_data_dir

    check_data_source(args.data, args.data_dir)
    if args.data is not None:
        return [("--data", args.data)]
    return [("--data-dir", resolve_data_dir(args.data_dir))]
