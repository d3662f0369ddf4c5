"""What the scanning commands (`scan_all_maps`, `microscope`) do around the library's job (`jaxoip.jobs`):
join the processes, load the model, prepare the output folder and load the data, from their shared flags."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

from jaxoip import cli, distributed
from jaxoip._io import check_apart
from jaxoip.data.idx import DATA_DIR_ENV

# Not in the output folder's record: how the processes joined (a run resumes on another process count) and
# what does not change the results.
_UNRECORDED = ("overwrite", "resume", "no_progress", "no_cache", "out", *distributed.JOIN_OPTIONS)


def start_data(args: argparse.Namespace) -> Callable | None:
    """Starts loading what `data` will use (`load_data(args.data, args.data_dir, optional=True)`) and its checksum
    on a daemon thread, so that reading the files overlaps the backend's start, the model's load and the plan.
    Returns the function `data` calls: it waits for the images and raises what loading raised, where a scan
    has always loaded its data. None when no file is named: tensorflow-datasets, if anything, loads then, as
    before (TensorFlow started ahead of JAX's backend would take the accelerator's memory).

    Called after the checks that need no data, before `start`.
    """
    from jaxoip.data import idx  # The standard library only: its files are read while JAX is imported.

    folder = (args.data_dir or os.environ.get(DATA_DIR_ENV)) if args.data is None else None
    if folder:
        with contextlib.suppress(OSError, RuntimeError):  # A bad folder is reported by the loader, in its words.
            idx.prefetch(folder)
    # Imported here (JAX with it, through jaxtyping), not in the thread: two threads importing one package can
    # deadlock.
    from jaxoip.data.images import load_data

    if args.data is None and not folder:
        return None
    loaded = Future()

    def load():
        try:
            images = load_data(args.data, args.data_dir, optional=True)
            if images is not None:
                images.checksum()  # Kept by the object, for `jobs.check_inputs`.
            loaded.set_result(images)
        except BaseException as e:  # noqa: BLE001 - raised again by `loaded.result()`, in the main thread.
            loaded.set_exception(e)

    threading.Thread(target=load, name="jaxoip-data", daemon=True).start()
    return loaded.result


def start(args: argparse.Namespace, join: distributed.DistributedConfig):
    """(the model, the compilation cache's folder or None): the processes of a multi-process run joined and
    agreed on their settings (--out may differ: only process 0 writes), the output apart from the inputs."""
    distributed.start(join)  # Before JAX starts.
    cli.check_backend()
    distributed.check_same(
        {k: v for k, v in vars(args).items() if k not in (*distributed.JOIN_OPTIONS, "no_progress", "out")}
    )
    from jaxoip.models import checkpoint

    model_path = checkpoint.reference_model_path() if args.model in (None, "reference") else args.model
    check_apart(args.out, [("--model", model_path), *cli.data_paths(args)])
    cache = cli.enable_caches(not args.no_cache)
    return checkpoint.resolve_model(args.model, args.data_dir, args.data, args.input_scale), cache


@contextlib.contextmanager
def output(args: argparse.Namespace, command: str) -> Iterator:
    """--out prepared on process 0 (`distributed.main_output`; None on the others), by --overwrite and --resume."""
    config = {k: v for k, v in vars(args).items() if k not in _UNRECORDED}
    with distributed.main_output(args.out, command, config, args.overwrite, args.resume, 64 * 2**20) as out:
        yield out


def data(args: argparse.Namespace, trained, plans: Sequence, load: Callable | None = None):
    """The images the scans may use (or None, with a note on process 0), after the cheap checks and the output
    folder's: each plan's need of data checked (`ScanPlan.check_data`). `load`: from `start_data`."""
    images, note = cli.optional_data(args, trained.config.input_shape, load)
    for plan in plans:
        plan.check_data(images)
    if note and distributed.is_main():
        print(note, file=sys.stderr)
    return images


def options(args: argparse.Namespace) -> dict:
    """The options a scan's summary records."""
    return {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume", "process_id")}
