"""Training throughput: `train` (images/s, seconds/epoch) and seed-batched `train_seeds` vs sequential seeds.

Both are measured side by side in one run on the same data. Defaults are small (a couple of minutes on a
2-core CPU); use --train-subset 0 --epochs 3 --seeds 8 for the full picture on an accelerator.

    JAXOIP_DATA_DIR=/path/to/mnist python experiments/bench_train.py
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.
from jaxoip.data.mnist import load_mnist  # noqa: E402
from jaxoip.models.multiseed import train_seeds  # noqa: E402
from jaxoip.models.train import TrainConfig, train  # noqa: E402


def steady_epoch_seconds(history: dict) -> float:
    """Mean epoch time without the first epoch (which includes compilation), if there is more than one."""
    s = history["seconds"]
    return sum(s[1:]) / len(s[1:]) if len(s) > 1 else s[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-subset", type=int, default=4000, help="training images (0: all 60,000)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the first one includes compilation")
    p.add_argument("--seeds", type=int, default=4, help="seeds for the batched vs sequential comparison")
    p.add_argument("--max-parallel", type=int, default=None, help="seeds per compiled program in train_seeds")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()

    dev = jax.devices()[0]
    print(
        f"machine: {platform.node()} {platform.machine()}, jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(jax.devices())} x {dev.device_kind}"
    )
    data = load_mnist(args.data_dir)
    subset = args.train_subset or None
    n = subset or data.train_images.shape[0]
    cfg = TrainConfig(epochs=args.epochs, train_subset=subset)
    print(f"{n} training images, batch {cfg.batch_size}, {args.epochs} epochs, {args.seeds} seeds")

    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    sequential = [train(dataclasses.replace(cfg, seed=s), data=data, progress=False) for s in seeds]
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = train_seeds(seeds, cfg, data=data, max_parallel=args.max_parallel, progress=False)
    t_bat = time.perf_counter() - t0

    epoch = steady_epoch_seconds(sequential[0].history)
    print(
        f"train: {epoch:.2f} s/epoch, {n / epoch:,.0f} images/s (steady state; first epoch with compile "
        f"{sequential[0].history['seconds'][0]:.2f} s)"
    )
    seq_epoch = sum(steady_epoch_seconds(m.history) for m in sequential)
    bat_epoch = steady_epoch_seconds(batched[0].history) * -(-args.seeds // (args.max_parallel or args.seeds))
    print(
        f"sequential, {args.seeds} seeds: {t_seq:.1f} s wall ({args.seeds / t_seq:.3f} seeds/s), "
        f"{seq_epoch:.2f} s per epoch of all seeds"
    )
    print(
        f"train_seeds, {args.seeds} seeds: {t_bat:.1f} s wall ({args.seeds / t_bat:.3f} seeds/s), "
        f"{bat_epoch:.2f} s per epoch of all seeds"
    )
    print(
        f"seeds-per-second ratio batched/sequential: {t_seq / t_bat:.2f}x wall, "
        f"{seq_epoch / bat_epoch:.2f}x steady state"
    )
    acc = [m.metrics["test_accuracy"] for m in batched]
    print("test accuracy per seed (batched): " + ", ".join(f"{a:.4f}" for a in acc))


if __name__ == "__main__":
    main()
