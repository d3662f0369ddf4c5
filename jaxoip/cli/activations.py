"""`python -m jaxoip activations`: activation figures and tables.

Grids of all maps of a layer for test images, two groups of images compared on one color scale, the
confusion matrix, the misclassified and least-sure test images, and dataset exemplars per map.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jaxoip import cli
from jaxoip._io import check_apart, prepare_output
from jaxoip.analysis.exemplars import find_exemplars
from jaxoip.analysis.grid_comparison import compare_images
from jaxoip.analysis.grids import layer_grid
from jaxoip.analysis.predictions import least_confident, misclassified, most_confused, predict_split
from jaxoip.cli import flags
from jaxoip.data.images import load_data
from jaxoip.data.inputs import get_images, parse_image_spec
from jaxoip.data.mnist import check_data_shape
from jaxoip.errors import JaxoipError, LayerError
from jaxoip.models.cnn import MAP_KINDS, get_layer, layer_shapes

if TYPE_CHECKING:  # pandas is imported by the analyses that build the tables.
    import pandas as pd

# Named when the command runs out of memory (`cli.run`).
MEMORY_OPTIONS = "--exemplars"


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "", name.removesuffix(".npy")) or "image"


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp)
    tmp.replace(path)
    return path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = flags.parser(
        "python -m jaxoip activations",
        "Activation grids of a layer, group comparisons, predictions, confusion matrix, exemplars.",
    )
    p.add_argument("--model", default=None, help=cli.MODEL_HELP + " (default: the shipped reference model)")
    p.add_argument(
        "--layer", default="Conv2D_3", help="layer name, e.g. Conv2D_2, Max_Pool_2, Dense_1 (default: %(default)s)"
    )
    p.add_argument(
        "--image", default=None, help="grid of the layer for images SET:INDEX[,...], e.g. test:19 or train:7"
    )
    p.add_argument("--compare", default=None, help="group A for a comparison, e.g. test:4,test:6,test:19")
    p.add_argument("--versus", default=None, help="group B for a comparison, e.g. test:7,test:9,test:12")
    p.add_argument("--names", default="A,B", help="names of the two groups (default: %(default)s)")
    p.add_argument(
        "--cmap", default="viridis", help="matplotlib colormap, e.g. viridis, magma, jet (default: %(default)s)"
    )
    p.add_argument(
        "--standardize", action="store_true", help="the study's per-map scaling: std * 64 + 128, clipped to 0..255"
    )
    p.add_argument(
        "--per-row", type=_positive, default=None, help="maps per grid row (default: 8, or the layer's maps if fewer)"
    )
    p.add_argument("--confusion", action="store_true", help="confusion matrix of the test set")
    p.add_argument(
        "--misclassified",
        type=_positive,
        default=None,
        metavar="N",
        help="the N most confidently misclassified test images",
    )
    p.add_argument(
        "--uncertain", type=_positive, default=None, metavar="N", help="the N test images the model is least sure of"
    )
    p.add_argument(
        "--exemplars", type=_positive, default=None, metavar="K", help="top-K test images per map of a conv/pool layer"
    )
    p.add_argument("--out", default="activations_out", help="output folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the complete jaxoip output folder at --out")
    cli.add_precision_flag(p)
    cli.add_data_dir(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli.check_backend()
    from jaxoip.analysis import figures
    from jaxoip.models import checkpoint

    if not (
        args.image
        or args.compare
        or args.versus
        or args.confusion
        or args.misclassified
        or args.uncertain
        or args.exemplars
    ):
        raise JaxoipError(
            "nothing to do: give --image, --compare/--versus, --confusion, --misclassified, --uncertain or --exemplars"
        )
    if bool(args.compare) != bool(args.versus):
        raise JaxoipError("--compare and --versus go together: one group of images each")
    names = tuple(s.strip() for s in args.names.split(","))
    if len(names) != 2 or not all(names):
        raise JaxoipError(f"--names needs two names separated by a comma; got {args.names!r}")
    figures.check_colormap(args.cmap)
    specs = [s for group in (args.image, args.compare, args.versus) if group for s in group.split(",") if s.strip()]
    for s in specs:
        if not s.strip().endswith(".npy"):
            parse_image_spec(s)  # Fail on a malformed spec before loading anything.
    model_path = checkpoint.reference_model_path() if args.model in (None, "reference") else args.model
    check_apart(args.out, [("--model", model_path), *cli.data_paths(args)])
    trained = checkpoint.resolve_model(args.model, args.data_dir, args.data, args.input_scale)
    uses_layer = bool(args.image or args.compare or args.exemplars)  # Predictions need no layer.
    if uses_layer:
        get_layer(trained.config, args.layer, MAP_KINDS if args.exemplars else None)
    # Before the output folder: a bad data path is no output problem.
    data = check_data_shape(load_data(args.data, args.data_dir), trained.config.input_shape)
    if args.exemplars:
        figures.check_exemplar_figure(trained.config, args.layer, args.exemplars, len(data.test_images))
    if args.image or args.compare:
        maps = layer_shapes(trained.config)[get_layer(trained.config, args.layer).name][-1]
        if args.per_row is None:
            args.per_row = min(8, maps)
        elif args.per_row > maps:  # A grid row wider than the layer is empty cells.
            raise LayerError(f"--per-row {args.per_row} is more than the {maps} maps of {args.layer}")
    config = {k: v for k, v in vars(args).items() if k not in ("overwrite", "resume", "out")}
    with prepare_output(args.out, "activations", config, args.overwrite, expected_bytes=16 * 2**20) as out:
        # Every image spec is resolved before the first figure: a bad one fails with nothing written.
        images = get_images(args.image, data, trained.config.input_shape) if args.image else []
        if args.compare:
            get_images(args.compare, data, trained.config.input_shape)
            get_images(args.versus, data, trained.config.input_shape)
        _write_figures(args, trained, data, names, images, out.staging, out.path)
    return 0


def _write_figures(args, trained, data, names, images, stage: Path, shown: Path):
    from jaxoip.analysis import figures

    for img in images:
        grid = layer_grid(
            trained, args.layer, img, per_row=args.per_row, standardize=args.standardize, precision=args.precision
        )
        path = stage / f"{args.layer}_{_file_stem(img.name)}.png"
        figures.plot_layer_grid(grid, args.cmap, path, class_names=data.class_names)
        p = grid.probabilities
        label = "none" if img.label is None else data.class_name(img.label)
        print(
            f"{img.name} (label {label}): predicted {data.class_name(p.argmax())} ({p.max():.1%}); "
            f"wrote {shown / path.name}"
        )
    if args.compare:
        comp = compare_images(
            trained,
            args.layer,
            args.compare,
            args.versus,
            data,
            names,
            args.per_row,
            args.standardize,
            precision=args.precision,
        )
        path = stage / f"compare_{args.layer}.png"
        figures.plot_comparison(comp, args.cmap, path, class_names=data.class_names)
        csv = _write_csv(comp.summary, stage / f"compare_{args.layer}.csv")
        s = comp.summary
        top = s["difference"].abs().sort_values(ascending=False).index[:8].tolist()
        print(
            f"{args.layer}: maps active only for {names[0]}: {s.index[s['only_a']].tolist()}; "
            f"only for {names[1]}: {s.index[s['only_b']].tolist()}; largest |mean difference|: {top}\n"
            f"wrote {shown / path.name} and {shown / csv.name}"
        )
    if args.confusion or args.misclassified or args.uncertain:
        pred = predict_split(trained, data, "test", precision=args.precision)
        print(f"test accuracy {pred.accuracy:.2%} ({int((pred.predicted != pred.labels).sum())} misclassified)")
        if args.confusion:
            cm = pred.confusion()
            path = stage / "confusion.png"
            figures.plot_confusion_matrix(
                cm, path, title=f"test accuracy {pred.accuracy:.2%}", class_names=data.class_names
            )
            confused = most_confused(cm).to_string(index=False)
            print(f"most confused (true -> predicted):\n{confused}\nwrote {shown / path.name}")
        for n, table, what in (
            (args.misclassified, misclassified, "misclassified"),
            (args.uncertain, least_confident, "uncertain"),
        ):
            if n:
                rows = table(pred, n)
                path = stage / f"{what}.png"
                figures.plot_predictions(
                    rows, data.test_images, path, title=f"{what} test images", class_names=data.class_names
                )
                print(
                    f"{what}:\n{rows.to_string(index=False, float_format='{:.3f}'.format)}\nwrote {shown / path.name}"
                )
    if args.exemplars:
        start = time.perf_counter()
        ex = find_exemplars(trained, data, args.layer, k=args.exemplars, precision=args.precision)
        seconds = time.perf_counter() - start
        path = stage / f"exemplars_{args.layer}.png"
        figures.plot_exemplars(ex, path, labels=data.split(ex.split)[1], class_names=data.class_names)
        print(
            f"{args.layer}: top-{args.exemplars} test images of {len(ex.patches)} maps in {seconds:.1f} s "
            f"(precision {args.precision}); "
            f"wrote {shown / path.name}"
        )
