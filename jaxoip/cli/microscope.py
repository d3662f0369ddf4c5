"""`python -m jaxoip microscope`: every conv block of a model (and its class logits) scanned into one site.

For each layer, the scan of `scan_all_maps` (all maps, the study's search with the wake-up) with its files
and site in `<out>/<layer>/`; `<out>/index.html` is the landing page, one section per layer. A killed run
resumes with --resume: every layer's finished search groups are kept.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from jaxoip import cli, distributed
from jaxoip._io import add_output_flags
from jaxoip.cli import flags, scans
from jaxoip.errors import JaxoipError
from jaxoip.oip.config import ObjectiveConfig, OIPConfig

_OIP_FIELDS = ("steps", "precision")

# Named when the command runs out of memory (`cli.run`).
MEMORY_OPTIONS = "--restarts or --precursor-starts"


def _parser() -> argparse.ArgumentParser:
    p = flags.parser("python -m jaxoip microscope", "Scan every conv layer of a model and its logits into one site.")
    p.add_argument("--model", default=None, help=cli.MODEL_HELP + " (default: the shipped reference model)")
    p.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers (default: every conv block, i.e. a conv with the batch norm and activation "
        "layers right after it, and the class logits)",
    )
    flags.add_flags(p, OIPConfig, only=_OIP_FIELDS)
    flags.add_flags(p, ObjectiveConfig, only=("wake",))
    p.add_argument("--restarts", type=int, default=None, help="random starts per map (default: 16, on CPU 8)")
    p.add_argument("--precursor-starts", type=int, default=64, help="starts per recipe in the precursor scan")
    p.add_argument("--seed", type=int, default=0, help="seed of the starts")
    p.add_argument("--exemplars", type=int, default=3, help="test-set exemplars per map of a conv layer (0: none)")
    p.add_argument("--out", default="microscope_out", help="output folder")
    add_output_flags(p)
    cli.add_engine_flags(p, precision=False)
    cli.add_data_dir(p)
    flags.add_flags(p, distributed.DistributedConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    join = flags.config_from_args(distributed.DistributedConfig, args)
    if args.exemplars < 0:
        raise JaxoipError(f"--exemplars must be 0 or more, got {args.exemplars}")
    cfg = flags.config_from_args(OIPConfig, args, only=_OIP_FIELDS)
    options = flags.config_from_args(ObjectiveConfig, args, only=("wake",))
    load_data = scans.start_data(args)
    trained, _ = scans.start(args, join)
    from jaxoip import jobs
    from jaxoip.oip import plan as scan_plan

    layers = jobs.microscope_layers(trained) if args.layers is None else [s.strip() for s in args.layers.split(",")]
    if not layers or len(set(layers)) < len(layers) or not all(layers):
        raise JaxoipError(f"--layers must name distinct layers, got {args.layers!r}")
    # Every layer and size checked before the output folder is touched.
    plans = [
        scan_plan.plan_scan(
            trained,
            name,
            restarts=args.restarts,
            config=cfg,
            precursor_starts=args.precursor_starts,
            seed=args.seed,
            exemplars=args.exemplars,
            options=options,
        )
        for name in layers
    ]
    # Only process 0 writes (out is None on the others).
    with scans.output(args, "microscope") as out:
        data = scans.data(args, trained, plans, load_data)
        runs = jobs.run_microscope(
            plans,
            data,
            out,
            progress=not args.no_progress,
            options=scans.options(args),
            model=str(args.model or jobs.REFERENCE_MODEL),
            started=t_start,
        )
    if out is None:  # Not process 0, which prints.
        return 0
    for run in runs:
        s = run.result.summary()
        print(f"{s.layer}: OIP found for {s.found} of {s.maps} maps ({run.scan_seconds:.1f} s scan)")
    total, scanned = time.perf_counter() - t_start, sum(run.scan_seconds for run in runs)
    print(f"{total:.1f} s in all, {scanned:.1f} s of scans; wrote {out.path}/index.html")
    return 0
