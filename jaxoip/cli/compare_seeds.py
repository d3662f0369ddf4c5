"""`python -m jaxoip compare_seeds`: do independently trained copies of the CNN learn the same filters?

Trains `--seeds` copies of the default CNN with the study's recipe, differing only in seed (batched over
seeds in one compiled program), or loads `--models` checkpoints; compares every pair layer by layer
against two nulls (untrained network, shuffled images) and writes a Markdown report, a JSON of every
number and figures to --out, and a site to browse them (--out/index.html; --no-html: none). Trained
checkpoints go to <out>/models/seed_<s>; while the run goes on they are kept as each group of seeds
finishes, so `--resume` after a kill skips the seeds already trained.

Across processes (`--coordinator HOST:PORT --num-processes N --process-id I`, or a Slurm / Open MPI job):
each process trains its share of the groups of `--max-parallel` seeds (default there: the seeds shared
evenly), process 0 gathers and saves them, and the comparison runs once, on process 0 alone, which alone
writes and prints; the others exit 0 after training.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxoip import cli, distributed
from jaxoip._check import SEED_MAX
from jaxoip._io import add_output_flags, check_apart
from jaxoip.cli import flags
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import ModelConfig, get_layer
from jaxoip.models.train import TrainConfig, check_training_data
from jaxoip.oip.config import ObjectiveConfig, OIPConfig
from jaxoip.seeds.config import CompareConfig

_TRAIN_FIELDS = ("epochs", "train_subset")  # Of TrainConfig; the rest is the study's recipe.
_OIP_FIELDS = ("steps",)  # Of CompareConfig.oip, as --oip-steps; --oip-wake is of CompareConfig.oip_objective.


# Named when the command runs out of memory (`cli.run`).
MEMORY_OPTIONS = "--seeds, --max-parallel, --max-samples, --bootstrap or --oip-restarts"


def _parser() -> argparse.ArgumentParser:
    p = flags.parser(
        "python -m jaxoip compare_seeds", "Compare the feature maps of independently trained copies of the CNN."
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", type=int, default=5, help="train this many copies")
    src.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="PATH",
        help="compare these checkpoints or .keras/.h5 files instead of training",
    )
    flags.add_flags(p, TrainConfig, only=_TRAIN_FIELDS)
    p.add_argument("--max-parallel", type=int, default=None, help="seeds per compiled training program (default: all)")
    options = flags.add_flags(p, CompareConfig)
    options["seed"].help = "first training seed (seeds S..S+N-1); " + options["seed"].help
    flags.add_flags(p, OIPConfig, prefix="oip-", only=_OIP_FIELDS)
    flags.add_flags(p, ObjectiveConfig, prefix="oip-", only=("wake",))
    p.add_argument("--out", default="compare_out", help="report folder")
    p.add_argument(
        "--no-html", action="store_true", help="skip the browsable site (index.html and site/, opened from disk)"
    )
    cli.add_engine_flags(p)
    add_output_flags(p, "report folder")
    cli.add_data_dir(p)
    flags.add_flags(p, distributed.DistributedConfig)
    return p


def configs(args: argparse.Namespace) -> tuple[CompareConfig, TrainConfig]:
    """The comparison's and the training's config from the parsed options."""
    for name in args.layers:  # A clear message for a bad name before CompareConfig's own checks.
        get_layer(ModelConfig(), name, ("conv",))
    oip = flags.config_from_args(OIPConfig, args, prefix="oip-", only=_OIP_FIELDS, precision=args.precision)
    objective = flags.config_from_args(ObjectiveConfig, args, prefix="oip-", only=("wake",))
    cfg = flags.config_from_args(CompareConfig, args, oip=oip, oip_objective=objective)
    return cfg, flags.config_from_args(TrainConfig, args, only=_TRAIN_FIELDS, precision=args.precision)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before JAX starts: the processes of a multi-process run join, then agree on their settings.
    distributed.start(flags.config_from_args(distributed.DistributedConfig, args))
    cli.check_backend()
    # --out may differ: only process 0 writes.
    distributed.check_same(
        {k: v for k, v in vars(args).items() if k not in (*distributed.JOIN_OPTIONS, "no_progress", "out")}
    )
    main_process = distributed.is_main()
    cfg, tcfg = configs(args)
    layers = cfg.layers
    if args.models is None and args.seeds < 2:
        raise JaxoipError(f"a seed comparison needs at least two seeds, got --seeds {args.seeds}")
    if args.models is not None and len(args.models) < 2:
        raise JaxoipError(f"a seed comparison needs at least two models, got {len(args.models)}")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise JaxoipError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    if args.models is None and args.seed + args.seeds - 1 > SEED_MAX:
        raise JaxoipError(f"the training seeds {args.seed}..{args.seed + args.seeds - 1} go beyond {SEED_MAX}")
    cli.enable_caches(not args.no_cache)

    from jaxoip.data.images import load_data
    from jaxoip.data.mnist import check_data_shape
    from jaxoip.models import checkpoint
    from jaxoip.models.train import model_config_for_data
    from jaxoip.seeds import compare

    inputs = [("--models", m) for m in args.models or []] + cli.data_paths(args)
    check_apart(args.out, inputs)

    models = names = None
    data = load_data(args.data, args.data_dir)  # Small; its sizes bound the settings, checked before any work.
    model_config = None
    if args.models is not None:  # Every model checked before any work.
        names = [Path(m).name for m in args.models]
        if len(set(names)) < len(names):
            same = sorted({n for n in names if names.count(n) > 1})
            raise JaxoipError(f"--models share the name {same[0]!r}: give folders or files with distinct names")
        models = [checkpoint.load_model(m, args.data_dir, args.data, args.input_scale) for m in args.models]
        for m in models:
            check_data_shape(data, m.config.input_shape)
        compare.check_models(models, layers)
        for line in compare.seed_warnings(names, [compare.model_info(m, n) for m, n in zip(models, names)]):
            if main_process:
                print(f"warning: {line}", file=sys.stderr)
    else:
        check_training_data(tcfg, data)
        model_config = model_config_for_data(data)  # The study's layers, sized to the data's images and classes.
    compare.check_settings(
        cfg, data, models[0].config if models else model_config, len(models) if models else args.seeds
    )
    # They do not change the results (nor does how the processes joined: a run resumes on another count).
    skip = ("overwrite", "resume", "no_progress", "no_cache", "out", *distributed.JOIN_OPTIONS)
    config = {k: v for k, v in vars(args).items() if k not in skip}
    # Only process 0 writes (out is None on the others).
    with distributed.main_output(args.out, "compare_seeds", config, args.overwrite, args.resume, 64 * 2**20) as out:
        # A resume goes on with the data (and models) it started with.
        error = None
        try:
            if out is not None:
                given = {"models": "+".join(checkpoint.model_checksum(m) for m in models)} if models else {}
                out.check_inputs(data=data.checksum(), **given)
        except JaxoipError as e:
            error = e
        distributed.agree(error, "the resume check")
        if models is None:
            seeds = list(range(args.seed, args.seed + args.seeds))
            names = [f"seed_{s}" for s in seeds]
            folder = out.partial / "models" if out is not None else None
            show = not args.no_progress and main_process
            models = compare.trained_models(seeds, tcfg, data, folder, args.max_parallel, show, model_config)
        # Every model exists: the comparison runs once, on process 0 alone (its own devices); the others are done.
        distributed.leave()
        if out is None:
            return 0
        if args.models is None:
            compare.check_models(models, layers)
            print(f"{len(models)} models ({args.epochs} epochs each) in {out.path / 'models'}")
        result = compare.compare_models(models, data, cfg, names=names, progress=not args.no_progress)
        command = "python -m jaxoip compare_seeds " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        from jaxoip.seeds.report import write_report_files  # matplotlib: imported when the report is written.

        write_report_files(result, out.staging, command=command)
        if not args.no_html:
            _site(result, models, data, out.staging)
        if args.models is None:
            # A copy: the trained models stay in the partial folder until the results are in place, so a
            # failure while finishing leaves them for --resume.
            shutil.copytree(out.partial / "models", out.staging / "models")
    for layer in layers:
        print(result.headline(layer))
    print(f"wrote {out.path}/report.md ({result.seconds:.0f} s)")
    return 0


def _site(result, models, data, folder) -> None:
    """The browsable site; with an OIP comparison, each compared map's exemplars beside its OIP."""
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.site.compare_site import write_compare_site

    layer = result.config.oip_layer
    used = sorted({i for pair in result.oip for i in pair}) if layer else []
    exemplars = {i: find_exemplars(models[i], data, layer, k=3, precision=result.config.oip.precision) for i in used}
    write_compare_site(result, folder, exemplars=exemplars or None)
