"""Orbax checkpoints of trained models: parameters plus a JSON of config, standardization and provenance.

A checkpoint is a folder `<path>/` with `state/` (Orbax) and `metadata.json`. `save_model` writes it as a
jaxoip output folder (`jaxoip._io.prepare_output`): staged, then moved into place, so an interrupted save
never leaves a folder that loads. Loading refuses non-finite parameters and an unusable standardization,
and checks the parameters against `params_checksum` and the format, model config and standardization
against `metadata_checksum`. Only the current format is read: formats 1 and 2 left the model config (and
format 1 the standardization) unprotected, and the format field itself is covered, so a relabelled file
cannot skip a check.

`epoch_manager`, `save_epoch` and `restore_epoch` keep a training run's latest epoch (parameters, optimizer
state, history) so that `jaxoip.models.train.train` continues an interrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxoip import distributed
from jaxoip._check import check_type
from jaxoip._io import prepare_output
from jaxoip.data.mnist import (  # noqa: F401 - the bounds were defined here; still found here.
    MAX_ABS_MEAN,
    STD_RANGE,
    Standardization,
    check_standardization,
)
from jaxoip.errors import CheckpointError, JaxoipError
from jaxoip.models.adapter import is_factory, load_factory
from jaxoip.models.cnn import WEIGHTS, ModelConfig, TrainedModel, check_trained, init_model, nonfinite_parameters
from jaxoip.models.keras import load_keras_model
from jaxoip.models.metadata import (  # noqa: F401 - defined here before; still found here.
    FORMAT,
    OLD_FORMATS,
    REFERENCE_NAME,
    metadata_checksum,
    old_std_checksum,
    read_metadata,
    reference_model_path,
)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # Read by jaxoip.models.keras.


def _flat_params(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def params_checksum(params) -> str:
    """SHA-256 over parameter names, shapes and bytes, in a fixed order."""
    h = hashlib.sha256()
    for name, a in sorted(_flat_params(params).items()):
        h.update(name.encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()


def model_checksum(trained: TrainedModel) -> str:
    """SHA-256 of what a model computes: its config, standardization and parameters."""
    params = nnx.to_pure_dict(nnx.state(trained.model, WEIGHTS))
    std = trained.standardization
    what = [trained.config.to_dict(), [std.mean, std.std], params_checksum(params)]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _check_finite_params(params, where: str):
    bad = nonfinite_parameters(params)
    if bad:
        raise CheckpointError(
            f"{where} holds non-finite weights in layer {', '.join(bad[:3])}: a diverged or damaged model"
        )


def _ignore_closed_event_loop(unraisable) -> bool:
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


class _FailedReadFilter(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of reads from `paths` (see below)."""

    def __init__(self):
        super().__init__()
        self.paths: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Task exception was never retrieved" in msg and any(p in msg for p in self.paths))


_FAILED_READS = _FailedReadFilter()


@contextlib.contextmanager
def _quiet_failed_read(state: Path):
    """Silences the leftovers of an Orbax read of `state` that fails; every other report passes on.

    When a damaged file fails a restore, TensorStore's reads of the other arrays finish later, on their
    own threads. They post to Orbax's event loop, which the failed restore already closed, and Python
    reports each post through `sys.unraisablehook` ("Event loop is closed"); their failed tasks are
    logged by asyncio when collected ("Task exception was never retrieved", naming the file). Both come
    before, during and after the error reaches the caller and would bury its one line under tracebacks.

    The unraisable filter is installed for the read and stays only if the read fails (the reports keep
    coming after it); it chains to the hook that was there. The log filter drops only records that name
    a checkpoint whose read was attempted here.
    """
    _FAILED_READS.paths.add(str(state))
    logger = logging.getLogger("asyncio")
    if _FAILED_READS not in logger.filters:
        logger.addFilter(_FAILED_READS)
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _ignore_closed_event_loop(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    yield  # A failed read raises here and the filter stays: its threads report after this.
    if sys.unraisablehook is hook:
        sys.unraisablehook = previous


def _checkpointer():
    import orbax.checkpoint as ocp  # Slow import; only where checkpoints are touched.

    if distributed.process_count() == 1:
        return ocp.StandardCheckpointer()
    # A multi-process run: each process reads or writes alone (only process 0 saves), so Orbax must not wait
    # for the others; its own barrier names keep the processes' barriers apart.
    me = distributed.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"p{me}")
    return ocp.StandardCheckpointer(multiprocessing_options=alone)


def write_checkpoint(folder: str | os.PathLike, trained: TrainedModel) -> Path:
    """Writes `state/` and `metadata.json` of `trained` into the existing, empty folder `folder`."""
    folder = Path(folder).absolute()
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(trained.model, WEIGHTS)))
    _check_finite_params(params, "the model to save")
    std = trained.standardization
    check_standardization(std.mean, std.std, "the model to save")
    with _checkpointer() as ckptr:
        ckptr.save(folder / "state", params)
        ckptr.wait_until_finished()
    meta = {
        "format": FORMAT,
        "model_config": trained.config.to_dict(),
        "standardization": std.to_dict(),
        "train_config": trained.train_config,
        "history": trained.history,
        "metrics": trained.metrics,
        "data_checksum": trained.data_checksum,
        "params_checksum": params_checksum(params),
    }
    meta["metadata_checksum"] = metadata_checksum(meta)
    # metadata.json is written last: a folder without it is never taken for a checkpoint.
    (folder / "metadata.json").write_text(json.dumps(meta, indent=1))
    return folder


def save_model(path: str | os.PathLike, trained: TrainedModel, overwrite: bool = False) -> Path:
    """Writes `trained` to the new or empty folder `path` (replacing a jaxoip checkpoint there with `overwrite`)."""
    check_trained(trained)
    with prepare_output(path, "save_model", {}, overwrite=overwrite) as out:
        write_checkpoint(out.staging, trained)
    return out.path


def load_model(
    path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    input_scale: Standardization | None = None,
) -> TrainedModel:
    """Restores a checkpoint written by `save_model`; verifies its parameters against the stored checksum.

    A Keras file (`.keras`, legacy `.h5`) loads too (`jaxoip.models.keras.load_keras_model`); without leading
    Rescaling/Normalization layers its input standardization is `input_scale`, or fitted on the images at
    `data`, or for a 28x28x1 model MNIST's training set, as in the study. `path/to/file.py:factory` runs
    `factory()`, which returns `jaxoip.from_nnx(...)`, `from_keras(...)` or `from_torch(...)`.
    """
    check_type("path", path, (str, os.PathLike), " (a checkpoint folder or .keras/.h5 file)", CheckpointError)

    keras_file = Path(path).suffix.lower() in KERAS_SUFFIXES
    if input_scale is not None and not keras_file:
        raise CheckpointError(
            f"--input-scale is for Keras files; {path} carries its own standardization (a factory passes it to from_*)"
        )
    if is_factory(path):
        return load_factory(path)
    if str(path).endswith(".py"):
        raise CheckpointError(
            f"--model {path}: name the function that returns the model, as in {path}:factory "
            "(def factory(): return jaxoip.from_nnx(module, input_shape, standardization))"
        )
    path = Path(path).absolute()
    if keras_file:
        return load_keras_model(path, data_dir, data, input_scale)
    return _restore(path, read_metadata(path))


def _restore(path: Path, meta: dict) -> TrainedModel:
    """The model of the checkpoint folder `path`, whose checked metadata is `meta`."""
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        std = Standardization(**meta["standardization"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/metadata.json has an invalid model config or standardization: {e}") from None
    check_standardization(std.mean, std.std, f"{path}/metadata.json")

    model = nnx.eval_shape(lambda: init_model(config, 0))
    abstract = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    try:
        with _quiet_failed_read(path / "state"), _checkpointer() as ckptr:
            params = ckptr.restore(path / "state", target)
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged or mismatched files.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot restore parameters from {path}/state: {msg[:300]}") from None
    expected, got = _shapes(target), _shapes(params)
    if got != expected:
        diff = sorted(k for k in expected if got.get(k) != expected[k])
        raise CheckpointError(
            f"cannot restore parameters from {path}/state: they do not fit the model config in metadata.json "
            f"({', '.join(f'{k}: {got.get(k)} vs {expected[k]}' for k in diff[:3])})"
        )
    _check_finite_params(params, str(path))
    if params_checksum(params) != meta.get("params_checksum"):
        raise CheckpointError(f"{path}: parameters do not match the checksum in metadata.json (corrupt checkpoint)")

    graphdef, state = nnx.split(model)
    # device_put, not jnp.asarray: the latter compiles a program per parameter shape (jax.lax.stage).
    nnx.replace_by_pure_dict(state, jax.device_put(params))
    return TrainedModel(
        model=nnx.merge(graphdef, state),
        standardization=std,
        history=meta.get("history", {}),
        train_config=meta.get("train_config", {}),
        data_checksum=meta.get("data_checksum", ""),
        metrics=meta.get("metrics", {}),
    )


def upgrade_checkpoint(path: str | os.PathLike, new_path: str | os.PathLike) -> Path:
    """Re-saves a format-1 or -2 checkpoint at `path` as the current format in the new folder `new_path`.

    Those formats did not cover the model config by a checksum (format 1 not the standardization either),
    so jaxoip no longer loads them: check `metadata.json`'s model config first, then upgrade. The parameters
    (and, in format 2, the standardization) are still verified against their checksums; `path` is not changed.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(new_path, (str, os.PathLike)):
        raise CheckpointError(f"upgrade_checkpoint takes two folder paths, got {path!r} and {new_path!r}")
    path = Path(path).absolute()
    meta = read_metadata(path, old_formats=True)
    return save_model(new_path, _restore(path, meta))


def load_reference_model() -> TrainedModel:
    """The CNN shipped with the package (trained with the study's recipe on the full MNIST)."""
    path = reference_model_path()
    if not path.exists():
        raise CheckpointError(f"the reference model is missing from the installed package ({path})")
    return load_model(path)


def resolve_model(
    path: str | os.PathLike | None,
    data_dir: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    input_scale: Standardization | None = None,
) -> TrainedModel:
    """`path`'s checkpoint or Keras file, or the reference model when `path` is None or 'reference'."""
    if path in (None, "reference"):
        if input_scale is not None:
            raise CheckpointError("--input-scale is for a --model that does not standardize its inputs itself")
        return load_reference_model()
    return load_model(path, data_dir, data, input_scale)


# --- Per-epoch training state, to resume an interrupted training run --------------------------------------


def epoch_manager(directory: Path):
    """Keeps the latest epoch's parameters, optimizer state and history (saved synchronously: the
    buffers are donated to the next epoch)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "history"))


def restore_epoch(manager, params, opt_state):
    """(epochs done, params, opt_state, history) of the latest saved epoch, or None when there is none."""
    import orbax.checkpoint as ocp

    epoch = manager.latest_step()
    if epoch is None:
        return None
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), {"params": params, "opt_state": opt_state})
    try:
        r = manager.restore(
            epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore())
        )
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged files.
        raise JaxoipError(
            f"cannot resume from epoch {epoch}: its checkpoint is damaged "
            f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})"
        ) from None
    return epoch, r.state["params"], r.state["opt_state"], {k: list(v) for k, v in r.history.items()}


def save_epoch(manager, epoch: int, params, opt_state, history):
    import orbax.checkpoint as ocp

    manager.save(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}), history=ocp.args.JsonSave(history)
        ),
    )
