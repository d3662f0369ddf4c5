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

# Named when the command runs out of memory, however it was started (`cli.run`).
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
    from jaxoip.models.cnn import SEARCH_KINDS, get_layer
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
    for name in layers:  # Every layer and size checked before the output folder is touched.
        get_layer(trained.config, name, SEARCH_KINDS)
        scan.check_scan(trained, name, None, args.restarts, cfg, precursor_starts=args.precursor_starts, seed=args.seed)
    config = {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume", "no_progress", "no_cache", "out")}
    with prepare_output(args.out, "microscope", config, args.overwrite, args.resume, 64 * 2**20) as out:
        data, note = cli.optional_data(args, trained.config.input_shape)
        if note:
            print(note, file=sys.stderr)
        out.check_inputs(model=checkpoint.model_checksum(trained), data=data.checksum() if data else "none")
        entries = []
        for name in layers:
            bar = Progress(not args.no_progress, f"microscope {name}", unit="image-step")
            with bar:
                entries.append(_layer(args, trained, cfg, data, name, out, bar))
        from jaxoip.site.microscope_site import write_microscope_site

        write_microscope_site(out.staging, entries, model=str(args.model or "the shipped reference model"))
    total = time.perf_counter() - t_start
    scans = sum(e["scan_seconds"] for e in entries)
    for e in entries:
        print(f"{e['layer']}: OIP found for {e['found']} of {e['maps']} maps ({e['scan_seconds']:.1f} s scan)")
    print(f"{total:.1f} s in all, {scans:.1f} s of scans; wrote {out.path}/index.html")
    return 0


def _layer(args, trained, cfg, data, name, out, bar) -> dict:
    """Scans one layer into <staging>/<layer>/ (files and site); returns its landing-page entry."""
    from jaxoip.analysis.data_views import data_views
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.models.cnn import MAP_KINDS, get_layer
    from jaxoip.oip import scan
    from jaxoip.site import write_scan_site

    t0 = time.perf_counter()
    result = scan.scan_maps(
        trained,
        name,
        None,
        args.restarts,
        cfg,
        precursor_starts=args.precursor_starts,
        seed=args.seed,
        data=data,
        progress=bar,
        partial_dir=out.partial / name / "search",
    )
    result.options = {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume")}
    scan_seconds = time.perf_counter() - t0
    ex = views = None
    if data is not None and args.exemplars and get_layer(trained.config, name).kind in MAP_KINDS:
        with bar.phase("exemplars"):
            ex = find_exemplars(trained, data, name, k=args.exemplars, precision=cfg.precision)
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


def entry():
    """The `jaxoip-microscope` console script."""
    cli.execute(main)


if __name__ == "__main__":
    entry()
