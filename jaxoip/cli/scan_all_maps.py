"""`python -m jaxoip scan_all_maps`: precursor scan and OIP search for every map of a layer.

With no arguments: the shipped reference model, all 128 maps of Conv2D_3, 600 steps, 16 starts per
map on an accelerator (8 on a CPU), the study's plain ascent with the wake-up of silent maps.
Writes a gallery, per-map tables and arrays to --out, and a site to browse them (--out/index.html; --no-html: none).

Targets: `--layer Dense_2 --maps 4` searches the input that makes the network say 4 (the class logit);
`--layer Dense_2 --target 4-9` the input that says 4 rather than 9 (see `jaxoip.oip.targets` for the syntax).
`--style robust`, `--param fourier` and `--diversity` give Lucid-style regularized, smooth or diverse
patterns (see `jaxoip.oip.transforms`, `jaxoip.oip.param`, `jaxoip.oip.facets`); `--param maco` keeps the
training images' amplitude spectrum and optimizes the phase, and `--selective` ascends the target against
the layer's other maps (see `jaxoip.oip.targets`); both need MNIST.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from jaxoip import cli, distributed
from jaxoip._io import add_output_flags
from jaxoip.cli import flags, scans
from jaxoip.errors import JaxoipError

# Plain Python: the arguments are checked before JAX is imported (`_check_early`).
from jaxoip.models.metadata import checkpoint_model_config
from jaxoip.oip.config import (
    DEFAULT_RECIPES,
    FACET_THRESHOLD,
    STYLES,
    ObjectiveConfig,
    OIPConfig,
    check_scan_args,
    check_target,
    get_recipes,
    style_config,
    target_maps,
)

_STYLE_FIELDS = ("jitter", "scale", "rotate", "tv", "l1", "blur")


# Named when the command runs out of memory (`cli.run`).
MEMORY_OPTIONS = "--restarts, --screen, --precursor-starts or --chunk-size"


def _node(text: str) -> tuple[int, int]:
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected --node i,j; got {text!r}") from None
    return i, j


def _parser() -> argparse.ArgumentParser:
    p = flags.parser(
        "python -m jaxoip scan_all_maps",
        "Find the optimal input pattern of every map of a layer (precursor scan, then batched search).",
    )
    p.add_argument("--model", default=None, help=cli.MODEL_HELP + " (default: the shipped reference model)")
    p.add_argument("--layer", default="Conv2D_3", help="conv, pool or dense layer")
    p.add_argument(
        "--maps",
        type=cli.int_list,
        default=None,
        help="map (or dense node, class) indices, e.g. 0-15,120 (default: all)",
    )
    p.add_argument(
        "--target",
        action="append",
        default=None,
        metavar="SUM",
        help="a weighted sum of units of --layer instead of --maps, e.g. 4-9, 4,-1*9 or 0.5*3+0.5*8 "
        "(repeat for several)",
    )
    p.add_argument(
        "--node", type=_node, default=None, metavar="I,J", help="maximize node i,j of each map instead of its mean"
    )
    p.add_argument(
        "--style",
        choices=tuple(STYLES),
        default="study",
        help="study: plain gradient ascent; robust: random jitter 2 px, scale 0.9-1.1, rotation 10 deg at every "
        "step, total variation 0.05, blur 0.5",
    )
    # The search itself: OIPConfig's fields, with its defaults; --jitter ... --blur default to --style's preset.
    options = flags.add_flags(p, OIPConfig, defaults=dict.fromkeys(_STYLE_FIELDS))
    for name in _STYLE_FIELDS:
        options[name].help += f" (default: from --style: study 0, robust {STYLES['robust'].get(name, 0)})"
    flags.add_flags(p, ObjectiveConfig)  # What is ascended: --quantity, --wake, --selective.
    p.add_argument("--restarts", type=int, default=None, help="random starts per map (default: 16, on CPU 8)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="noise recipes of the precursor scan")
    p.add_argument("--precursor-starts", type=int, default=64, help="starts per recipe in the precursor scan")
    p.add_argument(
        "--screen", type=int, default=8, help="candidates per start; the most active one is kept (1: no screening)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the starts and transformations")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="images per device per compiled call; the same bits on any device count (default: automatic)",
    )
    p.add_argument(
        "--facet-threshold",
        type=float,
        default=FACET_THRESHOLD,
        help="starts whose images match up to a shift with correlation >= this share a facet",
    )
    p.add_argument(
        "--observer-model",
        default=None,
        metavar="PATH",
        help="a second two-choice observer: feature similarity in this independently trained model's "
        "checkpoint or Keras file (default: the pixel observer only)",
    )
    p.add_argument(
        "--observer-layer", default=None, help="the observer model's layer (default: its layer before the last)"
    )
    p.add_argument("--exemplars", type=int, default=3, help="test-set exemplars per map in the gallery (0: none)")
    p.add_argument("--all-starts", action="store_true", help="also save every start's image in oips.npz")
    p.add_argument("--out", default="scan_out", help="output folder")
    p.add_argument(
        "--no-html", action="store_true", help="skip the browsable site (index.html and site/, opened from disk)"
    )
    add_output_flags(p)
    cli.add_engine_flags(p, precision=False)
    cli.add_data_dir(p)
    flags.add_flags(p, distributed.DistributedConfig)
    return p


def oip_config(args: argparse.Namespace) -> OIPConfig:
    """The search's config: the preset of --style, then the OIPConfig options given."""
    return style_config(args.style, **flags.flag_values(OIPConfig, args))


def weighted_targets(args: argparse.Namespace) -> tuple:
    """The weighted sums of --target (target i is sum i), or () for plain units."""
    if not args.target:
        return ()
    from jaxoip.oip.targets import Target

    return tuple(Target.parse(args.layer, t).terms for t in args.target)


def quality_config(args: argparse.Namespace):
    """The per-map measures' config (a `QualityConfig`): the defaults, with the second observer given."""
    from jaxoip.oip.two_choice import QualityConfig

    return QualityConfig(observer_model=args.observer_model, observer_layer=args.observer_layer)


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    join = flags.config_from_args(distributed.DistributedConfig, args)
    cfg, objective, weighted, recipes = _check_early(args)
    load_data = scans.start_data(args)
    trained, cache = scans.start(args, join)
    from jaxoip import jobs
    from jaxoip.oip import plan as scan_plan

    if args.observer_model is not None:  # A bad observer fails before the search, in one line.
        from jaxoip.oip.two_choice import feature_observer

        feature_observer(quality_config(args), trained.standardization)
    # Every option that sizes an array, memory included, before the output folder is touched.
    plan = scan_plan.plan_scan(
        trained,
        args.layer,
        args.maps,
        args.restarts,
        cfg,
        recipes,
        args.precursor_starts,
        args.screen,
        args.seed,
        args.node,
        args.chunk_size,
        quality_config(args),
        args.facet_threshold,
        args.exemplars,
        objective,
        weighted,
    )
    # Only process 0 writes (out is None on the others).
    with scans.output(args, "scan_all_maps") as out:
        data = scans.data(args, trained, [plan], load_data)
        run = jobs.run_scan(
            plan,
            data,
            out,
            snapshot_maps=args.maps,
            all_starts=args.all_starts,
            site=not args.no_html,
            progress=not args.no_progress,
            options=scans.options(args),
            extra_summary={"compilation_cache": str(cache) if cache else None},
            started=t_start,
        )
    if out is None:  # Not process 0, which prints.
        return 0
    s, compiles = run.result.summary(), run.compiles
    live = f" of {s.live_maps} live on data" if s.live_maps is not None else ""
    cpu_default = " (CPU default)" if args.restarts is None and s.backend == "cpu" else ""
    earlier = f" (+{s.earlier_search_seconds:.1f} s before the resume)" if s.earlier_search_seconds else ""
    print(
        f"{s.layer}: OIP found for {s.found} of {s.maps} maps "
        f"({s.found if s.found_of_live is None else s.found_of_live}{live}); "
        f"silent on noise: {s.silent_on_noise}; dead on data: {'n/a' if s.dead_on_data is None else s.dead_on_data}; "
        f"woken: {s.woken}\n"
        f"style {args.style}, param {args.param}, wake {'on' if args.wake else 'off'}, diversity {args.diversity}, "
        f"selective {args.selective}\n"
        f"{s.restarts} starts per map{cpu_default}, {s.steps} steps; {s.seconds:.1f} s scan, "
        f"search {s.search_seconds:.1f} s{earlier}, {s.image_steps_per_second:.0f} image-steps/s on "
        f"{s.devices} {s.backend} device(s), precision {s.precision}; "
        f"{compiles.compiled} programs compiled, {compiles.cache_hits} from the cache{_passes_read(compiles)}\n"
        f"wrote {run.path}{' (resumed)' if run.resumed else ''}"
    )
    return 0


def _passes_read(compiles) -> str:
    n = compiles.passes_read
    return f", {n} pass{'es' if n > 1 else ''} over the data read back" if n else ""


def _check_early(args: argparse.Namespace) -> tuple[OIPConfig, ObjectiveConfig, tuple, tuple]:
    """(the search's config, the objective's options, the weighted targets, the recipes), after every check
    that needs neither JAX, the weights nor data: the numbers, and the layer, maps and node against the
    checkpoint's metadata.json (a Keras file or a factory has its layers checked once loaded). A bad argument
    is refused in about a second."""
    check_scan_args(args.restarts, args.precursor_starts, args.screen, args.seed, args.chunk_size)
    if args.exemplars < 0:
        raise JaxoipError(f"--exemplars must be 0 or more, got {args.exemplars}")
    if args.target and args.maps is not None:
        raise JaxoipError("give either --maps or --target, not both")
    if not 0 <= args.facet_threshold <= 1:
        raise JaxoipError("--facet-threshold must be between 0 and 1")
    cfg, objective, weighted = oip_config(args), flags.config_from_args(ObjectiveConfig, args), weighted_targets(args)
    recipes = get_recipes([r.strip() for r in args.recipes.split(",") if r.strip()])
    model_config = checkpoint_model_config(args.model)
    if model_config is not None:
        maps = target_maps(model_config, args.layer, args.maps, weighted)
        check_target(model_config, args.layer, maps, args.node, weighted, objective)
    return cfg, objective, weighted, recipes
