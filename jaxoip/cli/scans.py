"""What the scanning commands (`scan_all_maps`, `microscope`) do around the library's job (`jaxoip.jobs`):
join the processes, load the model, prepare the output folder and load the data, from their shared flags."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence

from jaxoip import cli, distributed
from jaxoip._io import check_apart

# Not in the output folder's record: how the processes joined (a run resumes on another process count) and
# what does not change the results.
_UNRECORDED = ("overwrite", "resume", "no_progress", "no_cache", "out", *distributed.JOIN_OPTIONS)


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


def data(args: argparse.Namespace, trained, plans: Sequence):
    """The images the scans may use (or None, with a note on process 0), after the cheap checks and the output
    folder's: each plan's need of data checked (`ScanPlan.check_data`)."""
    images, note = cli.optional_data(args, trained.config.input_shape)
    for plan in plans:
        plan.check_data(images)
    if note and distributed.is_main():
        print(note, file=sys.stderr)
    return images


def options(args: argparse.Namespace) -> dict:
    """The options a scan's summary records."""
    return {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume", "process_id")}
