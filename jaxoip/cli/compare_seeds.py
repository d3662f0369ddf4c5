"""`python -m jaxoip compare_seeds`: do independently trained copies of the CNN learn the same filters?

Trains `--seeds` copies of the default CNN with the study's recipe, differing only in seed (batched over
seeds in one compiled program), or loads `--models` checkpoints; compares every pair layer by layer
against two nulls (untrained network, shuffled images) and writes a Markdown report, a JSON of every
number and figures to --out. Trained checkpoints go to <out>/models/seed_<s>; while the run goes on they
are kept as each group of seeds finishes, so `--resume` after a kill skips the seeds already trained.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxoip import cli
from jaxoip._io import add_output_flags, prepare_output
from jaxoip.compare import CONV_LAYERS, CompareConfig
from jaxoip.compare_report import write_report_files
from jaxoip.errors import JaxoipError
from jaxoip.model import ModelConfig, get_layer
from jaxoip.oip import OIPConfig
from jaxoip.train import TrainConfig


def _parser() -> argparse.ArgumentParser:
    d, t, o = CompareConfig(), TrainConfig(), OIPConfig()
    p = argparse.ArgumentParser(
        prog="python -m jaxoip.compare_seeds",
        description="Compare the feature maps of independently trained copies of the CNN.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", type=int, default=5, help="train this many copies (default: %(default)s)")
    src.add_argument(
        "--models", nargs="+", default=None, metavar="PATH", help="compare these checkpoints or .keras/.h5 files"
    )
    p.add_argument("--seed", type=int, default=0, help="first training seed (seeds S..S+N-1) and analysis seed")
    p.add_argument("--epochs", type=int, default=t.epochs, help="training epochs (default: %(default)s)")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N images only")
    p.add_argument("--max-parallel", type=int, default=None, help="seeds per compiled training program (default all)")
    p.add_argument("--layers", default=",".join(CONV_LAYERS), help="conv layers to compare (default: %(default)s)")
    p.add_argument("--test-subset", type=int, default=None, help="compare on the first N test images only")
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="spatial samples per layer (%(default)s)")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--oip-layer", default=d.oip_layer, help="layer of the OIP comparison ('none': skip)")
    p.add_argument("--oip-maps", type=int, default=d.oip_maps, help="matched maps per pair (default: %(default)s)")
    p.add_argument("--oip-steps", type=int, default=o.steps, help="OIP search steps (default: %(default)s)")
    p.add_argument(
        "--oip-wake",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wake maps silent on noise (ascend the pre-activation while the map is zero), so every map is "
        "compared by a real OIP (default: wake)",
    )
    p.add_argument("--oip-restarts", type=int, default=d.oip_restarts, help="starts per map (%(default)s)")
    p.add_argument(
        "--oip-source",
        choices=("scan", "shared"),
        default=d.oip_source,
        help="OIP search: 'scan' (improved: best recipe, screened starts) or 'shared' (same starts for "
        "every map) (default: %(default)s)",
    )
    p.add_argument(
        "--oip-max-shift",
        type=int,
        default=d.oip_max_shift,
        help="largest translation (pixels) of the shift-invariant OIP similarity (default: %(default)s)",
    )
    p.add_argument("--out", default="compare_out", help="report folder (default: %(default)s)")
    cli.add_engine_flags(p)
    add_output_flags(p, "report folder")
    cli.add_data_dir(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    layers = tuple(x.strip() for x in args.layers.split(",") if x.strip())
    oip_layer = None if str(args.oip_layer).lower() == "none" else args.oip_layer
    for name in layers:  # Before any training or loading.
        get_layer(ModelConfig(), name, ("conv",))
    cfg = CompareConfig(
        layers=layers,
        test_subset=args.test_subset,
        max_samples=args.max_samples,
        bootstrap=args.bootstrap,
        oip_layer=oip_layer,
        oip_maps=args.oip_maps,
        oip_restarts=args.oip_restarts,
        oip=OIPConfig(steps=args.oip_steps, wake=args.oip_wake, precision=args.precision),
        oip_source=args.oip_source,
        oip_max_shift=args.oip_max_shift,
        seed=args.seed,
    )
    if args.models is None and args.seeds < 2:
        raise JaxoipError(f"a seed comparison needs at least two seeds, got --seeds {args.seeds}")
    if args.models is not None and len(args.models) < 2:
        raise JaxoipError(f"a seed comparison needs at least two models, got {len(args.models)}")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise JaxoipError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    tcfg = TrainConfig(epochs=args.epochs, train_subset=args.train_subset, precision=args.precision)
    cli.enable_compilation_cache(not args.no_cache)

    from jaxoip import checkpoint, compare
    from jaxoip.data import load_mnist

    models = names = None
    if args.models is not None:  # Every model checked before any work.
        models = [checkpoint.load_model(m, args.data_dir) for m in args.models]
        names = [Path(m).name for m in args.models]
        compare.check_models(models, layers)
    config = {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume", "no_progress", "out")}
    with prepare_output(args.out, "compare_seeds", config, args.overwrite, args.resume, 64 * 2**20) as out:
        data = load_mnist(args.data_dir)
        if models is None:
            seeds = list(range(args.seed, args.seed + args.seeds))
            names = [f"seed_{s}" for s in seeds]
            models = compare.trained_models(
                seeds, tcfg, data, out.partial / "models", args.max_parallel, not args.no_progress
            )
            compare.check_models(models, layers)
            print(f"{len(models)} models ({args.epochs} epochs each) in {out.path / 'models'}")
        result = compare.compare_models(models, data, cfg, names=names, progress=not args.no_progress)
        command = "python -m jaxoip.compare_seeds " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        write_report_files(result, out.staging, command=command)
        if args.models is None:
            os.replace(out.partial / "models", out.staging / "models")
    for layer in layers:
        print(result.headline(layer))
    print(f"wrote {out.path}/report.md ({result.seconds:.0f} s)")
    return 0


def entry():
    """The `jaxoip-compare-seeds` console script."""
    cli.execute(main)


if __name__ == "__main__":
    entry()
