"""`python -m jaxoip train` (also `python -m jaxoip.train`): train the study's CNN on MNIST.

Writes one checkpoint folder: state/ (Orbax), metadata.json, history.json and history.png; keeps
per-epoch checkpoints while it runs, so `--resume` finishes a killed run with the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

from jaxoip import cli
from jaxoip._io import add_output_flags, prepare_output
from jaxoip._memory import check_fits
from jaxoip.model import ModelConfig
from jaxoip.train import OPTIMIZERS, REGULARIZERS, SCHEDULES, TrainConfig, train


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m jaxoip.train", description="Train the study's CNN on MNIST.")
    p.add_argument(
        "--out", default="runs/model", help="checkpoint folder to write, with history.json/png (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.learning_rate, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum, help="momentum of rmsprop and sgd (0: none)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="'power' is the study's powerSched")
    p.add_argument("--decay-rate", type=float, default=d.decay_rate)
    p.add_argument("--decay-steps", type=int, default=d.decay_steps)
    p.add_argument("--regularizer", choices=REGULARIZERS, default=d.regularizer, help="on the dense kernels")
    p.add_argument("--reg-param", type=float, default=d.reg_param)
    p.add_argument("--seed", type=int, default=d.seed, help="controls initialization and shuffling")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N images only")
    cli.add_engine_flags(p)
    add_output_flags(p, "checkpoint folder")
    cli.add_data_dir(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from jaxoip import checkpoint, plots

    args = _parser().parse_args(argv)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        momentum=args.momentum,
        schedule=args.schedule,
        decay_rate=args.decay_rate,
        decay_steps=args.decay_steps,
        regularizer=args.regularizer,
        reg_param=args.reg_param,
        seed=args.seed,
        train_subset=args.train_subset,
        precision=args.precision,
    )
    check_fits(ModelConfig(), min(cfg.batch_size, cfg.train_subset or 60_000), "a training batch", "--batch-size")
    cli.enable_compilation_cache(not args.no_cache)
    # Config, then the output folder, then data and compilation: a bad argument or --out fails at once.
    with prepare_output(
        args.out, "train", dataclasses.asdict(cfg), args.overwrite, args.resume, expected_bytes=16 * 2**20
    ) as out:
        trained = train(
            cfg, data_dir=args.data_dir, progress=not args.no_progress, checkpoint_dir=out.partial / "epochs"
        )
        checkpoint.write_checkpoint(out.staging, trained)
        (out.staging / "history.json").write_text(json.dumps(trained.history, indent=1))
        plots.plot_history(trained.history, out.staging / "history.png")
    h = trained.history
    print(
        f"test accuracy {h['val_accuracy'][-1]:.4%}, test loss {h['val_loss'][-1]:.4f} after {cfg.epochs} epochs "
        f"({sum(h['seconds']):.0f} s){' (resumed)' if out.resumed else ''}; checkpoint {out.path}"
    )
    return 0


def entry():
    """The `jaxoip-train` console script."""
    cli.execute(main)


if __name__ == "__main__":
    entry()
