"""`python -m jaxoip train`: train the study's CNN on MNIST, or a CNN of your layers (--conv, --pool,
--dense) on your images (--data): the input shape comes from the images, the output units from their classes.

Writes one checkpoint folder: state/ (Orbax), metadata.json, history.json and history.png; keeps
per-epoch checkpoints while it runs, so `--resume` finishes a killed run with the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

from jaxoip import cli
from jaxoip._io import add_output_flags, check_apart, prepare_output
from jaxoip.cli import flags
from jaxoip.models.cnn import ModelConfig
from jaxoip.models.memory import check_fits
from jaxoip.models.train import TrainConfig, model_config_for_data, train

# `ModelConfig`'s fields that are options, in one place: a field added to ModelConfig becomes an option here.
# Each is given in the field's own form: a list of layers is a comma list of colon-separated parts.
MODEL_FLAGS = {
    "conv": "conv layers FILTERS:KERNEL:ACTIVATION, comma-separated (default: the study's, 32:3:relu,64:3:relu,"
    "128:3:relu)",
    "pool": "max-pool sizes, pool i after conv i (default: the study's, 2,2)",
    "dense": "dense layers UNITS:ACTIVATION after the flatten, the last one with one unit per class (default: the "
    "study's, 100:relu and one softmax unit per class)",
}

# Named when the command runs out of memory (`cli.run`).
MEMORY_OPTIONS = "--batch-size"


def _parser() -> argparse.ArgumentParser:
    p = flags.parser("python -m jaxoip train", "Train the study's CNN on MNIST, or your CNN on your images.")
    p.add_argument("--out", default="runs/model", help="checkpoint folder to write, with history.json/png")
    flags.add_flags(p, TrainConfig)
    # No defaults here: an option not given keeps the study's layer (sized to the data, see model_config_for_data).
    flags.add_flags(p, ModelConfig, only=MODEL_FLAGS, defaults=dict.fromkeys(MODEL_FLAGS), helps=MODEL_FLAGS)
    cli.add_engine_flags(p, precision=False)
    add_output_flags(p, "checkpoint folder")
    cli.add_data_dir(p, input_scale=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from jaxoip.models import checkpoint
    from jaxoip.models.figures import plot_history

    args = _parser().parse_args(argv)
    cli.check_backend()
    cfg = flags.config_from_args(TrainConfig, args)
    layers = flags.flag_values(ModelConfig, args, only=MODEL_FLAGS)
    from jaxoip.data.images import load_data

    check_apart(args.out, cli.data_paths(args))
    # Config, then data (the model's input shape and classes come from it), then the output folder and
    # compilation: a bad argument, data set or --out fails before any work.
    data = load_data(args.data, args.data_dir)
    model_config = model_config_for_data(data, **layers)
    check_fits(model_config, min(cfg.batch_size, cfg.train_subset or 60_000), "a training batch", "--batch-size")
    cli.enable_caches(not args.no_cache)
    recorded = {**dataclasses.asdict(cfg), "model_config": model_config.to_dict()}
    with prepare_output(args.out, "train", recorded, args.overwrite, args.resume, expected_bytes=16 * 2**20) as out:
        out.check_inputs(data=data.checksum())  # A resume goes on with the data it started with.
        trained = train(
            cfg, model_config, data=data, progress=not args.no_progress, checkpoint_dir=out.partial / "epochs"
        )
        checkpoint.write_checkpoint(out.staging, trained)
        (out.staging / "history.json").write_text(json.dumps(trained.history, indent=1))
        plot_history(trained.history, out.staging / "history.png")
    h = trained.history
    print(
        f"test accuracy {h['val_accuracy'][-1]:.4%}, test loss {h['val_loss'][-1]:.4f} after {cfg.epochs} epochs "
        f"({sum(h['seconds']):.0f} s){' (resumed)' if out.resumed else ''}; checkpoint {out.path}\n"
        f"data {data.source}, model input {'x'.join(map(str, model_config.input_shape))}, "
        f"{model_config.dense[-1][0]} classes"
    )
    return 0
