"""Training several seeds at once: one vmapped epoch program trains a group of seeds on shared data.

Each seed ends as `jaxoip.models.train.train` would train it alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxoip._check import check_type
from jaxoip.data.mnist import MNIST, check_data, load_mnist
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.models.memory import check_fits
from jaxoip.models.train import (
    HISTORY_KEYS,
    TrainConfig,
    check_converging,
    check_trainable,
    epoch_batches,
    learning_rate_schedule,
    make_evaluate,
    make_train_epoch,
    mean_metrics,
    standardized_splits,
    trained_model,
)
from jaxoip.numerics import check_seed


def wait_ready(tree) -> None:
    """Waits for the arrays of `tree` in short sleeps, so that a Ctrl-C lands within a fraction of a second.

    A compiled epoch runs asynchronously; blocking on its result (`np.asarray`) would hold the
    interrupt until the epoch ends, minutes for several seeds on a CPU.
    """
    for leaf in jax.tree.leaves(tree):
        while not leaf.is_ready():
            time.sleep(0.02)


def train_seeds(
    seeds: Sequence[int],
    cfg: TrainConfig = TrainConfig(),
    model_config: ModelConfig = ModelConfig(),
    data: MNIST | None = None,
    data_dir: str | None = None,
    max_parallel: int | None = None,
    progress: bool | Any = True,
) -> list[TrainedModel]:
    """Trains one CNN per seed as `train(replace(cfg, seed=s))` would, batched over seeds with `jax.vmap`.

    Each seed keeps its own initialization, batch order and optimizer state; the data is shared. Up to
    `max_parallel` seeds (default: all) run in one compiled epoch program, the rest in further groups
    that reuse it. `history["seconds"]` is the wall time of the whole group's epoch. `progress`: True for
    a bar of its own, or a tqdm bar of a larger run to advance by one per seed and epoch; after the
    bar's first epoch an estimate of the time left is written to it.
    """
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise JaxoipError(f"seeds must be a list of integers, got {type(seeds).__name__}")
    for s in seeds:
        check_seed(s)
    check_type("cfg", cfg, TrainConfig)
    check_trainable(model_config)
    check_data(data, optional=True)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise JaxoipError("no seed given")
    if max_parallel is not None and max_parallel < 1:
        raise JaxoipError("max_parallel must be at least 1")
    group = max_parallel or len(seeds)
    per_batch = min(cfg.batch_size, cfg.train_subset or 60_000) * min(group, len(seeds))
    check_fits(
        model_config, per_batch, "a training batch (batch size x seeds in parallel)", "--max-parallel or --batch-size"
    )
    data = data if data is not None else load_mnist(data_dir)
    std, (train_x, train_y), (test_x, test_y) = standardized_splits(data, cfg)
    n = train_x.shape[0]
    batch_size = cfg.batch_size  # At most n (`standardized_splits` checks).

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: init_model(model_config, 0)))
    tx, train_epoch = make_train_epoch(graphdef, cfg)
    # Data shared (None), everything per seed on axis 0.
    train_epoch = jax.jit(jax.vmap(train_epoch, in_axes=(0, 0, None, None, 0, 0)), donate_argnums=(0, 1))
    evaluate = jax.jit(jax.vmap(make_evaluate(graphdef, precision=cfg.precision), in_axes=(0, None, None)))
    init_opt = jax.jit(jax.vmap(tx.init))
    batches = jax.jit(
        jax.vmap(lambda key, epoch: epoch_batches(jax.random.fold_in(key, epoch), n, batch_size), (0, None))
    )
    schedule = learning_rate_schedule(cfg)

    bar, own_bar = None, progress is True
    if own_bar:
        from jaxoip.progress import tqdm_class

        bar = tqdm_class()(total=cfg.epochs * len(seeds), desc=f"training {len(seeds)} seeds", unit="seed-epoch")
    elif progress:
        bar = progress
    out = []
    for lo in range(0, len(seeds), group):
        chunk = seeds[lo : lo + group]
        keys = [jax.random.split(jax.random.key(s)) for s in chunk]
        params = [nnx.split(init_model(model_config, init_key))[1] for init_key, _ in keys]
        params = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
        shuffle_keys = jnp.stack([shuffle_key for _, shuffle_key in keys])
        opt_state = init_opt(params)
        histories = [{k: [] for k in HISTORY_KEYS} for _ in chunk]
        steps = 0
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            idx, weights = batches(shuffle_keys, epoch)
            params, opt_state, metrics = train_epoch(params, opt_state, train_x, train_y, idx, weights)
            wait_ready(metrics)
            val_loss, val_acc = evaluate(params, test_x, test_y)
            wait_ready((val_loss, val_acc))
            val_loss, val_acc = np.asarray(val_loss), np.asarray(val_acc)
            metrics = [np.asarray(m) for m in metrics]
            steps += idx.shape[1]
            seconds = time.perf_counter() - t0
            for i, h in enumerate(histories):
                loss, acc = mean_metrics([m[i] for m in metrics])
                check_converging(epoch, loss, float(val_loss[i]), chunk[i])
                values = (loss, acc, float(val_loss[i]), float(val_acc[i]), float(schedule(steps)), seconds)
                for k, v in zip(h, values):
                    h[k].append(v)
            if bar is not None:
                bar.update(len(chunk))
                if bar.n == len(chunk) and bar.total > bar.n:  # The run's first epoch, compilation included.
                    left = (bar.total - bar.n) / len(chunk) * seconds
                    bar.write(
                        f"{bar.desc}: about {left / 60:.1f} min left (first epoch {seconds:.0f} s, compiling)",
                        file=bar.fp,
                    )
                bar.set_postfix(val_acc=" ".join(f"{h['val_accuracy'][-1]:.4f}" for h in histories))
        for i, (seed, h) in enumerate(zip(chunk, histories)):
            one = jax.tree.map(lambda a: a[i], params)  # noqa: B023 - used at once
            out.append(trained_model(nnx.merge(graphdef, one), std, h, dataclasses.replace(cfg, seed=seed), data))
    if own_bar:
        bar.close()
    return out
