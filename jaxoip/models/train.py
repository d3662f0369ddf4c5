"""Training one CNN with Optax: the study's recipe (`TrainConfig`), one compiled program per epoch.

The optimizer, schedule and loss are built from `TrainConfig`; an epoch is one `lax.scan` over batches.
`train` trains one seed (resumable from per-epoch checkpoints, `jaxoip.models.checkpoint.epoch_manager`);
`jaxoip.models.multiseed.train_seeds` trains several seeds at once with `jax.vmap`.
The command `python -m jaxoip train` (`jaxoip.cli.train`) trains a model and writes a checkpoint folder.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int, Key

from jaxoip._check import INT32_MAX, check_float, check_int, check_type
from jaxoip.data.mnist import MNIST, Standardization, check_data, load_mnist
from jaxoip.errors import DivergenceError, JaxoipError
from jaxoip.models.checkpoint import epoch_manager, restore_epoch, save_epoch
from jaxoip.models.cnn import CNN, ModelConfig, TrainedModel, check_model_config, check_trained, init_model, layer_specs
from jaxoip.models.memory import check_fits
from jaxoip.numerics import (
    DEFAULT_PRECISION,
    PRECISION_HELP,
    Precision,
    check_precision,
    check_seed,
    fetch,
    precision_scope,
    wait_ready,
)
from jaxoip.progress import tqdm_class

OPTIMIZERS = ("rmsprop", "adam", "nadam", "adamax", "sgd")
SCHEDULES = ("none", "power", "exponential")
REGULARIZERS = ("none", "l2", "l1")
# Far beyond the study's 40; with MNIST's 60,000 images even batch 1 keeps the step count within int32.
MAX_EPOCHS = 10_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The study's reference recipe: rmsprop (momentum 0.5), powerSched lr0 1e-3 rate 1e-3, L2 1e-3, batch 64."""

    epochs: int = dataclasses.field(default=40, metadata={"help": "passes over the training images"})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "images per gradient step"})
    optimizer: str = dataclasses.field(
        default="rmsprop", metadata={"choices": OPTIMIZERS, "help": "optimizer, with Keras' defaults (eps 1e-7)"}
    )
    learning_rate: float = dataclasses.field(default=1e-3, metadata={"flag": "--lr", "help": "initial learning rate"})
    momentum: float = dataclasses.field(default=0.5, metadata={"help": "momentum of rmsprop and sgd (0: none)"})
    schedule: str = dataclasses.field(
        default="power",
        metadata={"choices": SCHEDULES, "help": "learning-rate schedule; 'power' is the study's powerSched"},
    )
    decay_rate: float = dataclasses.field(default=1e-3, metadata={"help": "decay rate of the schedule"})
    decay_steps: int = dataclasses.field(default=1, metadata={"help": "steps per unit of decay of the schedule"})
    regularizer: str = dataclasses.field(
        default="l2", metadata={"choices": REGULARIZERS, "help": "penalty on the dense kernels"}
    )
    reg_param: float = dataclasses.field(default=1e-3, metadata={"help": "weight of the penalty"})
    seed: int = dataclasses.field(default=0, metadata={"help": "controls initialization and shuffling"})
    train_subset: int | None = dataclasses.field(
        default=None, metadata={"help": "train on the first N images only (tests, quick runs)"}
    )
    precision: Precision = dataclasses.field(
        default=DEFAULT_PRECISION,
        metadata={"help": f"matmul precision of training and evaluation: {PRECISION_HELP}"},
    )

    def __post_init__(self):
        check_precision(self.precision)
        for name, value, options in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("regularizer", self.regularizer, REGULARIZERS),
        ):
            if value not in options:
                raise JaxoipError(f"unknown {name} {value!r}; choose from {', '.join(options)}")
        check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        check_int("batch size", self.batch_size, 1, INT32_MAX)
        check_float("learning rate", self.learning_rate, 0, lo_open=True)
        check_float("momentum", self.momentum, 0, 1, hi_open=True)
        check_float("decay rate", self.decay_rate, 0, lo_open=self.schedule == "exponential")
        check_int("decay steps", self.decay_steps, 1, INT32_MAX)
        check_float("regularization parameter", self.reg_param, 0)
        check_seed(self.seed)
        check_int("train subset", self.train_subset, 1, INT32_MAX, optional=True)
        if self.train_subset is not None and self.batch_size > self.train_subset:
            raise JaxoipError(
                f"batch size {self.batch_size} is larger than the train subset of {self.train_subset} images"
            )


def learning_rate_schedule(cfg: TrainConfig) -> Callable[[Int[ArrayLike, ""]], Float[ArrayLike, ""]]:
    """An Optax schedule: none, the study's powerSched (inverse-time decay) or exponential decay, per step."""
    if cfg.schedule == "none":
        return optax.constant_schedule(cfg.learning_rate)
    if cfg.schedule == "exponential":
        return optax.exponential_decay(cfg.learning_rate, cfg.decay_steps, cfg.decay_rate)
    # Keras InverseTimeDecay: lr0 / (1 + rate * step / decay_steps). Optax has no such schedule.
    return lambda step: cfg.learning_rate / (1.0 + cfg.decay_rate * step / cfg.decay_steps)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    lr = learning_rate_schedule(cfg)
    momentum = cfg.momentum or None
    # eps=1e-7 as in Keras, whose defaults the study used.
    return {
        "rmsprop": lambda: optax.rmsprop(lr, decay=0.9, eps=1e-7, momentum=momentum),
        "adam": lambda: optax.adam(lr, eps=1e-7),
        "nadam": lambda: optax.nadam(lr, eps=1e-7),
        "adamax": lambda: optax.adamax(lr, eps=1e-7),
        "sgd": lambda: optax.sgd(lr, momentum=momentum),
    }[cfg.optimizer]()


def check_trainable(model_config) -> ModelConfig:
    """A built-in `ModelConfig` that `train` can train: batch normalization and dropout behave differently in
    training (batch statistics, random masks), which this trainer does not implement; one line otherwise."""
    if not isinstance(model_config, ModelConfig):
        check_model_config(model_config)
        raise JaxoipError("only a built-in ModelConfig can be trained; a researcher's own module trains elsewhere")
    odd = [s for s in layer_specs(model_config) if s.kind in ("batchnorm", "dropout")]
    if odd:
        raise JaxoipError(
            f"layer {odd[0].name!r} ({odd[0].kind}): training with batch normalization or dropout is not supported "
            "yet; load a model trained elsewhere (a Keras file) to analyze it"
        )
    return model_config


def regularization(params: nnx.State, model_config: ModelConfig, cfg: TrainConfig) -> Float[Array, ""]:
    """L2 (sum of squares) or L1 penalty on the dense kernels, as Keras' kernel_regularizer."""
    if cfg.regularizer == "none":
        return jnp.zeros(())
    dense = [s.name for s in layer_specs(model_config) if s.kind == "dense"]
    kernels = [params[name]["kernel"][...] for name in dense]
    if cfg.regularizer == "l2":
        return cfg.reg_param * sum(jnp.sum(k**2) for k in kernels)
    return cfg.reg_param * sum(jnp.sum(jnp.abs(k)) for k in kernels)


def batch_loss(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: Float[Array, "b H W ch"],
    labels: Int[Array, " b"],
    weights: Float[Array, " b"],
    cfg: TrainConfig,
) -> tuple[Float[Array, ""], tuple[Float[Array, ""], Float[Array, ""]]]:
    """Weighted mean categorical cross-entropy plus regularization; also returns the weighted accuracy."""
    model = nnx.merge(graphdef, params)
    logits = model(images, pre_activation=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    n = jnp.maximum(weights.sum(), 1.0)
    data_loss = jnp.sum(ce * weights) / n
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) * weights) / n
    return data_loss + regularization(params, model.config, cfg), (data_loss, acc)


def epoch_batches(
    key: Key[Array, ""], n: int, batch_size: int
) -> tuple[Int[Array, "steps b"], Float[Array, "steps b"]]:
    """A shuffled epoch as (num_batches, batch) indices and weights; the last batch is padded with weight 0.

    Keras keeps the last partial batch, so an epoch of 60,000 images at batch 64 has 938 steps.
    """
    steps = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    pad = steps * batch_size - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch_size)
    weights = (jnp.arange(steps * batch_size) < n).astype(jnp.float32).reshape(steps, batch_size)
    return idx, weights


def make_train_epoch(graphdef: nnx.GraphDef, cfg: TrainConfig):
    """Pure (params, opt_state, images, labels, idx, weights) -> (params, opt_state, per-step metrics)."""
    tx = make_optimizer(cfg)
    grad_fn = jax.grad(lambda p, x, y, w: batch_loss(graphdef, p, x, y, w, cfg), has_aux=True)

    def train_epoch(params, opt_state, images, labels, idx, weights):
        with precision_scope(cfg.precision):
            return _train_epoch(params, opt_state, images, labels, idx, weights)

    def _train_epoch(params, opt_state, images, labels, idx, weights):
        def step(carry, batch):
            params, opt_state = carry
            b_idx, b_w = batch
            grads, (loss, acc) = grad_fn(params, images[b_idx], labels[b_idx], b_w)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, acc, b_w.sum())

        (params, opt_state), metrics = jax.lax.scan(step, (params, opt_state), (idx, weights))
        return params, opt_state, metrics

    return tx, train_epoch


def make_evaluate(graphdef: nnx.GraphDef, batch_size: int = 1000, precision: Precision = DEFAULT_PRECISION):
    """Pure (params, images, labels) -> (mean cross-entropy, accuracy), batched with `lax.map`."""

    def evaluate(params, images, labels):
        with precision_scope(precision):
            return _evaluate(params, images, labels)

    def _evaluate(params, images, labels):
        n = images.shape[0]
        steps = -(-n // batch_size)
        pad = steps * batch_size - n
        xs = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(steps, batch_size, *images.shape[1:])
        ys = jnp.pad(labels, (0, pad)).reshape(steps, batch_size)
        ws = (jnp.arange(steps * batch_size) < n).astype(jnp.float32).reshape(steps, batch_size)

        def one(batch):
            x, y, w = batch
            logits = nnx.merge(graphdef, params)(x, pre_activation=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(ce * w), jnp.sum((jnp.argmax(logits, -1) == y) * w)

        ce, correct = jax.lax.map(one, (xs, ys, ws))
        return ce.sum() / n, correct.sum() / n

    return evaluate


HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def check_training_data(cfg: TrainConfig, data: MNIST) -> None:
    """The recipe's sizes against the data; refused rather than shrunk, so that the recorded recipe is the one run."""
    n = len(data.train_images)
    if cfg.train_subset is not None and cfg.train_subset > n:
        raise JaxoipError(f"train subset {cfg.train_subset} is larger than the {n} training images")
    n = cfg.train_subset or n
    if cfg.batch_size > n:
        raise JaxoipError(f"batch size {cfg.batch_size} is larger than the {n} training images")
    if cfg.epochs * -(-n // cfg.batch_size) > INT32_MAX:  # The optimizer counts steps in int32.
        raise JaxoipError(f"{cfg.epochs} epochs at batch size {cfg.batch_size} exceed {INT32_MAX} steps")


def standardized_splits(
    data: MNIST, cfg: TrainConfig
) -> tuple[
    Standardization,
    tuple[Float[Array, "n_train H W ch"], Int[Array, " n_train"]],
    tuple[Float[Array, "n_test H W ch"], Int[Array, " n_test"]],
]:
    """Standardization fitted on the (subset of the) training images, and both splits standardized on device."""
    check_training_data(cfg, data)
    train_x, train_y = data.train_images, data.train_labels
    if cfg.train_subset:
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    std = Standardization.fit(train_x)
    train = jnp.asarray(std(train_x)), jnp.asarray(train_y)
    return std, train, (jnp.asarray(std(data.test_images)), jnp.asarray(data.test_labels))


def data_classes(data: MNIST) -> int:
    """The number of classes of `data`: one more than its largest label."""
    return int(max(data.train_labels.max(initial=0), data.test_labels.max(initial=0))) + 1


def model_config_for_data(data: MNIST, **fields) -> ModelConfig:
    """A `ModelConfig` for `data`: its image shape (H, W, C) as the input, as many outputs as it has classes.

    `fields` (conv, pool, dense, ...) replace the study's layers; without `dense`, the study's dense layers
    with one output per class. A given output layer must have one unit per class. Layers that shrink the
    image to nothing are refused, naming the first such layer.
    """
    check_data(data)
    classes = data_classes(data)
    if fields.get("dense") is None:
        *hidden, (_, act) = ModelConfig().dense
        fields["dense"] = (*hidden, (classes, act))
    try:
        config = ModelConfig(
            **{k: v for k, v in fields.items() if v is not None}, input_shape=data.train_images.shape[1:]
        )
    except (TypeError, ValueError) as e:
        raise JaxoipError(f"bad model layers: {e}") from None
    units = config.dense[-1][0]
    if units != classes:
        raise JaxoipError(
            f"the output layer has {units} units but the data ({data.source}) has {classes} classes "
            f"(labels 0..{classes - 1})"
        )
    return config


def trained_model(
    model: CNN, std: Standardization, history: dict[str, list[float]], cfg: TrainConfig, data: MNIST
) -> TrainedModel:
    """The trained `model` with its standardization, history, recipe and the data's checksum."""
    return TrainedModel(
        model=model,
        standardization=std,
        history=history,
        train_config={**dataclasses.asdict(cfg), "data_source": data.source},
        data_checksum=data.checksum(),
        metrics={"test_accuracy": history["val_accuracy"][-1], "test_loss": history["val_loss"][-1]},
    )


def check_converging(epoch: int, loss: float, val_loss: float, seed: int | None = None) -> None:
    """Stops a diverged run (non-finite loss) instead of saving a broken model."""
    if not (np.isfinite(loss) and np.isfinite(val_loss)):
        who = f"seed {seed}: " if seed is not None else ""
        raise DivergenceError(
            f"{who}training diverged in epoch {epoch + 1} (loss {loss}, test loss {val_loss}); "
            "nothing saved; try a smaller learning rate"
        )


def mean_metrics(
    metrics: tuple[Float[ArrayLike, " steps"], Float[ArrayLike, " steps"], Float[ArrayLike, " steps"]],
) -> tuple[float, float]:
    """An epoch's loss and accuracy from per-step (loss, accuracy, weight), weighted by each step's images."""
    loss, acc, n = (np.asarray(m, np.float64) for m in metrics)
    return float((loss * n).sum() / n.sum()), float((acc * n).sum() / n.sum())


def train(
    cfg: TrainConfig = TrainConfig(),
    model_config: ModelConfig = ModelConfig(),
    data: MNIST | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
) -> TrainedModel:
    """Trains one CNN from `cfg.seed`; returns it with its standardization and per-epoch history.

    With `checkpoint_dir`, the state after every epoch is kept there (Orbax `CheckpointManager`) and a
    run interrupted before its end continues from its last epoch, to the same weights as without a break.
    """
    check_type("cfg", cfg, TrainConfig)
    check_trainable(model_config)
    check_data(data, optional=True)
    check_fits(model_config, min(cfg.batch_size, cfg.train_subset or 60_000), "a training batch", "--batch-size")
    data = data if data is not None else load_mnist(data_dir)
    std, (train_x, train_y), (test_x, test_y) = standardized_splits(data, cfg)
    batch_size = cfg.batch_size  # At most the training images (`standardized_splits` checks).

    init_key, shuffle_key = jax.random.split(jax.random.key(cfg.seed))
    model = init_model(model_config, init_key)
    graphdef, params = nnx.split(model)
    tx, train_epoch = make_train_epoch(graphdef, cfg)
    opt_state = tx.init(params)
    train_epoch = jax.jit(train_epoch, donate_argnums=(0, 1))
    evaluate = jax.jit(make_evaluate(graphdef, precision=cfg.precision))
    schedule = learning_rate_schedule(cfg)

    history = {k: [] for k in HISTORY_KEYS}
    start = 0
    manager = epoch_manager(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    try:
        restored = restore_epoch(manager, params, opt_state) if manager is not None else None
        if restored is not None:
            start, params, opt_state, history = restored
        steps = start * -(-train_x.shape[0] // batch_size)
        epochs = range(start, cfg.epochs)
        if progress:
            epochs = tqdm_class()(epochs, desc="training", unit="epoch", initial=start, total=cfg.epochs)
        for epoch in epochs:
            t0 = time.perf_counter()
            idx, weights = epoch_batches(jax.random.fold_in(shuffle_key, epoch), train_x.shape[0], batch_size)
            params, opt_state, metrics = train_epoch(params, opt_state, train_x, train_y, idx, weights)
            wait_ready(metrics)  # Not a blocking wait: a Ctrl-C lands while the epoch runs (a minute on a CPU).
            loss, acc = mean_metrics(metrics)
            val = evaluate(params, test_x, test_y)
            wait_ready(val)
            val_loss, val_acc = (float(v) for v in val)
            check_converging(epoch, loss, val_loss)
            steps += idx.shape[0]
            for k, v in zip(history, (loss, acc, val_loss, val_acc, float(schedule(steps)), time.perf_counter() - t0)):
                history[k].append(v)
            if manager is not None:
                save_epoch(manager, epoch + 1, params, opt_state, history)
            if progress:
                epochs.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", val_acc=f"{val_acc:.4f}")
    finally:
        if manager is not None:
            manager.close()

    return trained_model(nnx.merge(graphdef, params), std, history, cfg, data)


@functools.partial(jax.jit, static_argnames=("graphdef", "precision"))
def _evaluate_jit(params, images, labels, *, graphdef, precision):
    return make_evaluate(graphdef, precision=precision)(params, images, labels)


def evaluate_model(
    trained: TrainedModel, data: MNIST, split: str = "test", precision: Precision = DEFAULT_PRECISION
) -> dict[str, float]:
    """Cross-entropy and accuracy of a trained model on a split of `data`; one compiled program per shape."""
    check_trained(trained)
    images, labels = check_data(data).split(split)
    graphdef, params = nnx.split(trained.model)
    loss, acc = _evaluate_jit(
        params,
        np.asarray(trained.standardization(images), np.float32),
        np.asarray(labels),
        graphdef=graphdef,
        precision=check_precision(precision),
    )
    loss, acc = fetch((loss, acc))  # Waited for in polls: a Ctrl-C lands during a pass over the test set.
    return {"loss": float(loss), "accuracy": float(acc)}
