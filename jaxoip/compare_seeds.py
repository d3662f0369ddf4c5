"""`python -m jaxoip.compare_seeds`: do independently trained copies of the CNN learn the same filters, in order?

Trains `--seeds` copies of the default CNN with the study's recipe, differing only in seed (batched over
seeds in one compiled program), or loads `--models` checkpoints; compares every pair layer by layer
against two nulls (untrained network, shuffled images) and writes a Markdown report, a JSON of every
number and figures to --out. Trained checkpoints go to --models-out (default: <out>_models/seed_<s>).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxoip import cli
from jaxoip.compare import CONV_LAYERS, CompareConfig
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
    p.add_argument("--models-out", default=None, help="where to save trained checkpoints (default <out>_models)")
    p.add_argument("--layers", default=",".join(CONV_LAYERS), help="conv layers to compare (default: %(default)s)")
    p.add_argument("--test-subset", type=int, default=None, help="compare on the first N test images only")
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="spatial samples per layer (%(default)s)")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--oip-layer", default=d.oip_layer, help="layer of the OIP comparison ('none': skip)")
    p.add_argument("--oip-maps", type=int, default=d.oip_maps, help="matched maps per pair (default: %(default)s)")
    p.add_argument("--oip-steps", type=int, default=o.steps, help="OIP search steps (default: %(default)s)")
    p.add_argument("--oip-restarts", type=int, default=d.oip_restarts, help="starts per map (%(default)s)")
    p.add_argument("--oip-source", choices=("scan", "shared"), default=d.oip_source,
                   help="OIP search: 'scan' (improved: best recipe, screened starts) or 'shared' (same starts for "
                        "every map) (default: %(default)s)")
    p.add_argument("--oip-max-shift", type=int, default=d.oip_max_shift,
                   help="largest translation (pixels) of the shift-invariant OIP similarity (default: %(default)s)")
    p.add_argument("--out", default="compare_out", help="report folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
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
        oip=OIPConfig(steps=args.oip_steps),
        oip_source=args.oip_source,
        oip_max_shift=args.oip_max_shift,
        seed=args.seed,
    )
    if args.models is None and args.seeds < 2:
        raise JaxoipError(f"a seed comparison needs at least two seeds, got --seeds {args.seeds}")
    if args.models is not None and len(args.models) < 2:
        raise JaxoipError(f"a seed comparison needs at least two models, got {len(args.models)}")

    from jaxoip import checkpoint, compare
    from jaxoip.data import load_mnist
    from jaxoip.train import train_seeds

    out = Path(args.out)
    if args.models is not None:
        models = [checkpoint.load_model(m, args.data_dir) for m in args.models]
        names = [Path(m).name for m in args.models]
        compare.check_models(models, layers)
        data = load_mnist(args.data_dir)
    else:
        data = load_mnist(args.data_dir)
        seeds = list(range(args.seed, args.seed + args.seeds))
        tcfg = TrainConfig(epochs=args.epochs, train_subset=args.train_subset)
        models = train_seeds(seeds, tcfg, data=data, max_parallel=args.max_parallel, progress=not args.no_progress)
        models_out = Path(args.models_out) if args.models_out else out.with_name(out.name + "_models")
        names = [f"seed_{s}" for s in seeds]
        for name, m in zip(names, models):
            checkpoint.save_model(models_out / name, m)
        print(f"trained {len(models)} models ({args.epochs} epochs each); checkpoints in {models_out}")
    result = compare.compare_models(models, data, cfg, names=names, progress=not args.no_progress)
    command = "python -m jaxoip.compare_seeds " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    compare.write_report(result, out, command=command)
    for layer in layers:
        print(result.headline(layer))
    print(f"wrote {out}/report.md ({result.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
