"""`python -m jaxoip microscope`: every conv layer of a model (and its class logits) scanned into one site.

For each layer, the scan of `scan_all_maps` (all maps, the study's search with the wake-up) with its files
and site in `<out>/<layer>/`; `<out>/index.html` is the landing page, one section per layer. A killed run
resumes with --resume: every layer's finished search groups are kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from jaxoip import cli
from jaxoip._io import add_output_flags, check_apart, prepare_output
from jaxoip.cli import flags
from jaxoip.errors import JaxoipError
from jaxoip.oip.search import OIPConfig
from jaxoip.progress import Progress

_OIP_FIELDS = ("steps", "wake", "precision")

# Named when the command runs out of memory (`cli.run`).
MEMORY_OPTIONS = "--restarts or --precursor-starts"


def _parser() -> argparse.ArgumentParser:
    p = flags.parser("python -m jaxoip microscope", "Scan every conv layer of a model and its logits into one site.")
    p.add_argument("--model", default=None, help=cli.MODEL_HELP + " (default: the shipped reference model)")
    p.add_argument(
        "--layers", default=None, help="comma-separated layers (default: every conv layer and the class logits)"
    )
    flags.add_flags(p, OIPConfig, only=_OIP_FIELDS)
    p.add_argument("--restarts", type=int, default=None, help="random starts per map (default: 16, on CPU 8)")
    p.add_argument("--precursor-starts", type=int, default=64, help="starts per recipe in the precursor scan")
    p.add_argument("--seed", type=int, default=0, help="seed of the starts")
    p.add_argument("--exemplars", type=int, default=3, help="test-set exemplars per map of a conv layer (0: none)")
    p.add_argument("--out", default="microscope_out", help="output folder")
    add_output_flags(p)
    cli.add_engine_flags(p, precision=False)
    cli.add_data_dir(p)
    return p


def default_layers(config) -> list[str]:
    """Every conv layer, then the last layer when it holds one value per class (the logits)."""
    from jaxoip.models.cnn import VECTOR_KINDS, layer_specs

    specs = layer_specs(config)
    last = [specs[-1].name] if specs[-1].kind in VECTOR_KINDS else []
    return [s.name for s in specs if s.kind == "conv"] + last


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    cli.check_backend()
    from jaxoip.models import checkpoint
    from jaxoip.oip import scan

    if args.exemplars < 0:
        raise JaxoipError(f"--exemplars must be 0 or more, got {args.exemplars}")
    cfg = flags.config_from_args(OIPConfig, args, only=_OIP_FIELDS)
    model_path = checkpoint.reference_model_path() if args.model in (None, "reference") else args.model
    check_apart(args.out, [("--model", model_path), *cli.data_paths(args)])
    cli.enable_compilation_cache(not args.no_cache)
    trained = checkpoint.resolve_model(args.model, args.data_dir, args.data, args.input_scale)
    layers = default_layers(trained.config) if args.layers is None else [s.strip() for s in args.layers.split(",")]
    if not layers or len(set(layers)) < len(layers) or not all(layers):
        raise JaxoipError(f"--layers must name distinct layers, got {args.layers!r}")
    # Every layer and size checked before the output folder is touched.
    plans = [
        scan.plan_scan(
            trained,
            name,
            restarts=args.restarts,
            config=cfg,
            precursor_starts=args.precursor_starts,
            seed=args.seed,
            exemplars=args.exemplars,
        )
        for name in layers
    ]
    config = {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume", "no_progress", "no_cache", "out")}
    with prepare_output(args.out, "microscope", config, args.overwrite, args.resume, 64 * 2**20) as out:
        data, note = cli.optional_data(args, trained.config.input_shape)
        if note:
            print(note, file=sys.stderr)
        out.check_inputs(model=checkpoint.model_checksum(trained), data=data.checksum() if data else "none")
        entries = []
        for plan in plans:
            bar = Progress(not args.no_progress, f"microscope {plan.layer.name}", unit="image-step")
            with bar:
                entries.append(_layer(args, plan, data, out, bar))
        from jaxoip.site.microscope_site import write_microscope_site

        write_microscope_site(out.staging, entries, model=str(args.model or "the shipped reference model"))
    total = time.perf_counter() - t_start
    scans = sum(e["scan_seconds"] for e in entries)
    for e in entries:
        print(f"{e['layer']}: OIP found for {e['found']} of {e['maps']} maps ({e['scan_seconds']:.1f} s scan)")
    print(f"{total:.1f} s in all, {scans:.1f} s of scans; wrote {out.path}/index.html")
    return 0


def _layer(args, plan, data, out, bar) -> dict:
    """Scans one layer into <staging>/<layer>/ (files and site); returns its landing-page entry."""
    from jaxoip.analysis.data_views import data_views
    from jaxoip.oip import scan
    from jaxoip.site import write_scan_site

    t0 = time.perf_counter()
    trained, name, cfg = plan.trained, plan.layer.name, plan.config
    result = scan.scan_layer(plan, data, bar, out.partial / name / "search")
    result.options = {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume")}
    scan_seconds = time.perf_counter() - t0
    ex, views = result.exemplars, None  # Found in the scan's data pass (a map layer's maps, with data).
    if ex is not None:
        with bar.phase("exemplars"):
            views = data_views(trained, data, name, ex, precision=cfg.precision)
    folder = out.staging / name
    folder.mkdir()
    with bar.phase("files and site"):
        scan.write_scan_files(result, folder, None, False, ex, {"scan_seconds": round(scan_seconds, 2)})
        write_scan_site(
            result, folder, exemplars=ex, views=views, model=str(args.model or "the shipped reference model")
        )
    s = result.summary()
    return {
        "layer": name,
        "maps": s.maps,
        "found": s.found,
        "woken": s.woken,
        "dead_on_data": s.dead_on_data,
        "silent_on_noise": s.silent_on_noise,
        "scan_seconds": scan_seconds,
        "seconds": time.perf_counter() - t0,
        "thumbs": [f"{name}/site/img/{p.name}" for p in sorted((folder / "site" / "img").glob("*_best.png"))[:16]],
    }
