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
from jaxoip._io import add_output_flags, check_apart, prepare_output
from jaxoip.cli import flags
from jaxoip.models.cnn import ModelConfig
from jaxoip.models.memory import check_fits
from jaxoip.models.train import TrainConfig, train

# Named when the command runs out of memory, however it was started (`cli.run`).
MEMORY_OPTIONS = "--batch-size"


def _parser() -> argparse.ArgumentParser:
    p = flags.parser("python -m jaxoip.train", "Train the study's CNN on MNIST.")
    p.add_argument("--out", default="runs/model", help="checkpoint folder to write, with history.json/png")
    flags.add_flags(p, TrainConfig)
    cli.add_engine_flags(p, precision=False)
    add_output_flags(p, "checkpoint folder")
    cli.add_data_dir(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from jaxoip import plots
    from jaxoip.models import checkpoint

    args = _parser().parse_args(argv)
    cli.check_backend()
    cfg = flags.config_from_args(TrainConfig, args)
    check_fits(ModelConfig(), min(cfg.batch_size, cfg.train_subset or 60_000), "a training batch", "--batch-size")
    from jaxoip.data.mnist import load_mnist, resolve_data_dir

    check_apart(args.out, [("--data-dir", resolve_data_dir(args.data_dir))])
    cli.enable_compilation_cache(not args.no_cache)
    # Config, then the output folder, then data and compilation: a bad argument or --out fails at once.
    with prepare_output(
        args.out, "train", dataclasses.asdict(cfg), args.overwrite, args.resume, expected_bytes=16 * 2**20
    ) as out:
        data = load_mnist(args.data_dir)
        out.check_inputs(data=data.checksum())  # A resume goes on with the data it started with.
        trained = train(cfg, data=data, progress=not args.no_progress, checkpoint_dir=out.partial / "epochs")
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
