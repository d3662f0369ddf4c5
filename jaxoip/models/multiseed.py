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

from jaxoip import distributed
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
from jaxoip.numerics import check_seed, wait_ready
from jaxoip.progress import tqdm_class


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

    In a multi-process run (`jaxoip.distributed`) the groups go round-robin to the processes (default
    `max_parallel` there: the seeds shared evenly), each trains its own, and every process gets all models.
    A seed's bits depend on the seeds trained with it (XLA's batched programs round differently for another
    group size), not on the process: the same groups give the same bits on one process or many, and with
    `max_parallel=1` each seed has the bits of `train_seeds([seed])`.
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
    processes = distributed.process_count()
    group = max_parallel or -(-len(seeds) // processes)
    chunks = [seeds[lo : lo + group] for lo in range(0, len(seeds), group)]
    mine = chunks[distributed.process_index() :: processes]
    per_batch = min(cfg.batch_size, cfg.train_subset or 60_000) * min(group, len(seeds))
    check_fits(
        model_config, per_batch, "a training batch (batch size x seeds in parallel)", "--max-parallel or --batch-size"
    )
    data = data if data is not None else load_mnist(data_dir)
    std, (train_x, train_y), (test_x, test_y) = standardized_splits(data, cfg)
    n = train_x.shape[0]
    batch_size = cfg.batch_size  # At most n (`standardized_splits` checks).

    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: init_model(model_config, 0)))
    tx, train_epoch = make_train_epoch(graphdef, cfg)
    # Data shared (None), everything per seed on axis 0.
    train_epoch = jax.jit(jax.vmap(train_epoch, in_axes=(0, 0, None, None, 0, 0)), donate_argnums=(0, 1))
    evaluate = jax.jit(jax.vmap(make_evaluate(graphdef, precision=cfg.precision), in_axes=(0, None, None)))
    init_opt = jax.jit(jax.vmap(tx.init))
    batches = jax.jit(
        jax.vmap(lambda key, epoch: epoch_batches(jax.random.fold_in(key, epoch), n, batch_size), (0, None))
    )
    schedule = learning_rate_schedule(cfg)

    bar, own_bar = None, progress is True and distributed.is_main()
    if own_bar:
        bar = tqdm_class()(total=cfg.epochs * len(seeds), desc=f"training {len(seeds)} seeds", unit="seed-epoch")
    elif progress and progress is not True:
        bar = progress
    out, error = {}, None
    try:
        for chunk in mine:
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
                out[seed] = (one, h)
    except JaxoipError as e:  # A diverged seed: in a multi-process run, the others learn of it below.
        if processes == 1:
            raise
        error = e
    if processes > 1:
        out = _gather_seeds(out, abstract_state, error)
        if bar is not None:  # The other processes' seed-epochs.
            bar.update(cfg.epochs * (len(seeds) - sum(map(len, mine))))
    if own_bar:
        bar.close()
    return [
        trained_model(nnx.merge(graphdef, out[s][0]), std, out[s][1], dataclasses.replace(cfg, seed=s), data)
        for s in seeds
    ]


def _gather_seeds(mine: dict, abstract_state, error: JaxoipError | None) -> dict:
    """Every process's trained seeds ({seed: (state, history)}), bit for bit, on every process; a process's
    `error` stops them all (raised on it, named on the others)."""
    arrays = {"error": np.frombuffer(str(error or "").encode(), np.uint8)}
    for seed, (state, history) in mine.items():
        for i, leaf in enumerate(jax.tree.leaves(state)):
            arrays[f"{seed}/state/{i}"] = np.asarray(leaf)
        for k in HISTORY_KEYS:
            arrays[f"{seed}/history/{k}"] = np.asarray(history[k], np.float64)
    # Unwatched: a process may train one group more than the others; a dead one still ends the run (heartbeat).
    parts = distributed.all_arrays(arrays, "gathering the trained seeds", watch=False)
    if error is not None:
        raise error
    failed = [i for i, part in enumerate(parts) if part["error"].size]
    if failed:
        why = bytes(parts[failed[0]]["error"]).decode()
        raise JaxoipError(f"process {failed[0]} stopped training: {why}")
    treedef = jax.tree.structure(abstract_state)
    out = {}
    for part in parts:
        for seed in {int(k.split("/")[0]) for k in part if k != "error"}:
            leaves = [jnp.asarray(part[f"{seed}/state/{i}"]) for i in range(treedef.num_leaves)]
            history = {k: [float(v) for v in part[f"{seed}/history/{k}"]] for k in HISTORY_KEYS}
            out[seed] = (jax.tree.unflatten(treedef, leaves), history)
    return out
