"""The study's own Keras models as jaxoip CNNs: `.keras` (Keras 3) and legacy `.h5` files, read with h5py.

Sequential models and functional ones (`keras.Model(inputs, outputs)`) whose layers form a single chain.

A `.keras` file is a zip of `config.json` and `model.weights.h5`; a legacy `.h5` file holds the config
in the `model_config` attribute and the weights under `model_weights/<layer>`. Both map onto
`ModelConfig`: conv and pool layers in order become `Conv2D_i` / `Max_Pool_i` (the study's names),
the dense layers after the flatten become `Dense_1`, `Dense_2`, ... by order, whatever Keras named them.
Keras flattens NHWC in row-major order, as `CNN` does, so dense kernels are used as stored.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxoip.data.mnist import DATA_DIR_ENV, Standardization, optional_mnist
from jaxoip.errors import CheckpointError, DataError
from jaxoip.models.cnn import ModelConfig, TrainedModel, check_supported_input, init_model, layer_specs

_IGNORED = {"InputLayer", "Dropout"}  # Identity at inference.


@dataclasses.dataclass(frozen=True)
class KerasModel:
    """A Keras CNN read from a file: the jaxoip config and the parameters by jaxoip layer name."""

    config: ModelConfig
    params: dict[str, dict[str, np.ndarray]]  # "Conv2D_1" -> {"kernel": HWIO, "bias": ...}
    keras_names: dict[str, str]  # jaxoip layer name -> Keras layer name


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CheckpointError("reading Keras files needs h5py: pip install 'jaxoip[keras]'") from None
    return h5py


def _activation(value, where: str) -> str:
    # Keras 3 may serialize an activation as {"class_name": "function", "config": "relu", ...}.
    name = value.get("config", value.get("class_name")) if isinstance(value, dict) else value
    name = name or "linear"
    if name not in ("relu", "linear", "sigmoid", "tanh", "softmax"):
        raise CheckpointError(f"{where}: activation {name!r} is not supported")
    return name


def _square(value, what: str, where: str) -> int:
    v = [value, value] if isinstance(value, int) else list(value)
    if len(v) != 2 or v[0] != v[1]:
        raise CheckpointError(f"{where}: only square {what}s are supported, got {value}")
    return int(v[0])


def _input_shape(layers: list[dict], model_config: dict) -> tuple[int, ...] | None:
    for layer in layers:
        c = layer.get("config", {})
        for key in ("batch_shape", "batch_input_shape"):
            if c.get(key):
                return tuple(c[key][1:])
    build = model_config.get("build_input_shape")
    return tuple(build[1:]) if build else None


def _inbound_names(layer: dict) -> list[str]:
    """Names of the layers that feed `layer`: Keras 3 (`keras_history`) or Keras 2 (`[[name, 0, 0, {}]]`) form."""
    names = []
    for node in layer.get("inbound_nodes") or []:
        if isinstance(node, dict):  # Keras 3: {"args": [tensor, ...], "kwargs": {...}}.
            for arg in node.get("args", []):
                for tensor in arg if isinstance(arg, list) else [arg]:
                    history = tensor.get("config", {}).get("keras_history") if isinstance(tensor, dict) else None
                    if history:
                        names.append(history[0])
        else:  # Keras 2: a list of [layer name, node index, tensor index, kwargs].
            names += [inbound[0] for inbound in node if isinstance(inbound, list) and inbound]
    return names


def _chain(model_config: dict, source: str) -> list[dict]:
    """The layers of a functional model that form a single chain, in order; one line naming a branch otherwise."""
    layers = model_config.get("layers", [])
    previous = None
    for layer in layers:
        name, kind = layer.get("name") or layer.get("config", {}).get("name", "?"), layer.get("class_name")
        inbound = _inbound_names(layer)
        expected = [] if previous is None else [previous]
        if inbound != expected:
            what = f"takes {len(inbound)} inputs" if len(inbound) != 1 else f"is fed by {inbound[0]!r}"
            raise CheckpointError(
                f"{source}: layer {name!r} ({kind}) {what}; only models whose layers form a single chain are "
                f"supported (no branches, skips or merges)"
            )
        previous = name
    outputs = model_config.get("output_layers") or []
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    if len(outputs) > 1 or (outputs and previous is not None and outputs[0][0] != previous):
        raise CheckpointError(f"{source}: only models with one output, at the end of their chain, are supported")
    return layers


def parse_config(model_json: dict, source: str) -> tuple[ModelConfig, list[str]]:
    """(jaxoip config, Keras names of the conv, pool and dense layers in jaxoip's order) of a Keras config.

    Sequential models, and functional models (`keras.Model(inputs, outputs)`) whose layers form one chain.
    A config with missing or mistyped fields is one line too.
    """
    try:
        return _parse_config(model_json, source)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {str(e)[:120]}"
        raise CheckpointError(f"{source}: malformed Keras model config ({what})") from None


def _parse_config(model_json: dict, source: str) -> tuple[ModelConfig, list[str]]:
    kind = model_json.get("class_name")
    if kind not in ("Sequential", "Functional", "Model"):
        raise CheckpointError(
            f"{source}: only Sequential or single-chain functional Keras models are supported, got {kind!r}"
        )
    model_config = model_json.get("config", {})
    if kind == "Sequential":
        layers = model_config if isinstance(model_config, list) else model_config.get("layers", [])
    else:
        layers = _chain(model_config if isinstance(model_config, dict) else {}, source)
    model_config = model_config if isinstance(model_config, dict) else {}
    conv, pool, dense, names, stage, prev = [], [], [], [], "conv", None
    for layer in layers:
        kind, c = layer.get("class_name"), layer.get("config", {})
        where = f"{source}: layer {c.get('name', '?')!r} ({kind})"
        if kind in _IGNORED:
            continue
        if kind == "Conv2D" and stage == "conv":
            if c.get("padding", "valid") != "valid" or _square(c.get("strides", 1), "stride", where) != 1:
                raise CheckpointError(f"{where}: only valid, stride-1 convolutions are supported")
            if _square(c.get("dilation_rate", 1), "dilation", where) != 1 or c.get("groups", 1) != 1:
                raise CheckpointError(f"{where}: dilated or grouped convolutions are not supported")
            if c.get("data_format", "channels_last") != "channels_last" or not c.get("use_bias", True):
                raise CheckpointError(f"{where}: only channels_last convolutions with a bias are supported")
            conv.append(
                (int(c["filters"]), _square(c["kernel_size"], "kernel", where), _activation(c.get("activation"), where))
            )
        elif kind == "MaxPooling2D" and prev == "Conv2D" and len(pool) == len(conv) - 1:
            # jaxoip's pool i follows conv i: pools directly after the first convs, none after a conv without one.
            size = _square(c.get("pool_size", 2), "pool", where)
            strides = c.get("strides") or size
            if _square(strides, "pool stride", where) != size or c.get("padding", "valid") != "valid":
                raise CheckpointError(f"{where}: only non-overlapping, valid max pooling is supported")
            pool.append(size)
        elif kind == "Flatten" and stage == "conv":
            stage = "dense"
        elif kind == "Dense" and stage == "dense":
            if not c.get("use_bias", True):
                raise CheckpointError(f"{where}: only dense layers with a bias are supported")
            dense.append((int(c["units"]), _activation(c.get("activation"), where)))
        else:
            raise CheckpointError(
                f"{where} does not fit the study's CNN (Conv2D [MaxPooling2D] ..., Flatten, Dense ...)"
            )
        if kind != "Flatten":
            names.append(c.get("name", ""))
        prev = kind
    if not conv or not dense:
        raise CheckpointError(f"{source}: the Keras model needs conv layers, a Flatten and dense layers")
    shape = _input_shape(layers, model_config) or (28, 28, 1)
    try:
        config = ModelConfig(conv=tuple(conv), pool=tuple(pool), dense=tuple(dense), input_shape=shape)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return config, names


def _snake(class_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_name).lower()


def _read_keras_v3(path: Path) -> tuple[dict, dict[str, list[np.ndarray]]]:
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as z:
            model_json = json.loads(z.read("config.json"))
            weights_h5 = z.read("model.weights.h5")
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable .keras file: {e}") from None
    weights: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(io.BytesIO(weights_h5), "r") as f:
            groups = f.get("layers", {})
            layers = model_json.get("config", {}).get("layers", [])
            counts: dict[str, int] = {}
            for layer in layers:
                # Groups are keyed by class ("conv2d", "conv2d_1", ...) in order; newer Keras also stores the name.
                key = _snake(layer.get("class_name", ""))
                n = counts.get(key, 0)
                counts[key] = n + 1
                name = layer.get("config", {}).get("name", "")
                by_name = [
                    g
                    for g in groups
                    if groups[g].get("vars") is not None and groups[g]["vars"].attrs.get("name") == name
                ]
                group = by_name[0] if by_name else key if n == 0 else f"{key}_{n}"
                if group in groups and "vars" in groups[group]:
                    v = groups[group]["vars"]
                    weights[name] = [np.asarray(v[str(i)]) for i in range(len(v))]
    except (OSError, KeyError, ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable .keras file: {e}") from None
    return model_json, weights


def _read_legacy_h5(path: Path) -> tuple[dict, dict[str, list[np.ndarray]]]:
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable HDF5 file: {e}") from None
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise CheckpointError(f"{path} has no model config (a weights-only file?); save the whole model")
        try:
            model_json = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            group = f["model_weights"] if "model_weights" in f else f
            weights = {}
            for name in group:
                names = group[name].attrs.get("weight_names", [])
                weights[name] = [np.asarray(group[name][n.decode() if isinstance(n, bytes) else n]) for n in names]
        except (OSError, KeyError, ValueError, AttributeError) as e:  # json.JSONDecodeError is a ValueError.
            raise CheckpointError(f"{path} is not a readable Keras HDF5 model: {e}") from None
    return model_json, weights


def read_keras_file(path: str | os.PathLike) -> KerasModel:
    """Reads a Keras CNN of the study's shape (Sequential or a functional chain); one line otherwise."""
    path = Path(path).absolute()
    if not path.is_file():
        raise CheckpointError(f"no Keras model file at {path}")
    model_json, weights = (_read_keras_v3 if path.suffix.lower() == ".keras" else _read_legacy_h5)(path)
    if not isinstance(model_json, dict):
        raise CheckpointError(f"{path}: the model config is not a Keras model description")
    config, keras_names = parse_config(model_json, str(path))
    check_supported_input(config, str(path))
    params, names = {}, {}
    trainable = [s for s in layer_specs(config) if s.kind in ("conv", "dense")]
    by_kind = [s for s in layer_specs(config) if s.kind != "flatten"]
    for spec, keras_name in zip(by_kind, keras_names):
        names[spec.name] = keras_name
    for spec in trainable:
        arrays = weights.get(names[spec.name], [])
        if len(arrays) != 2:
            raise CheckpointError(f"{path}: layer {names[spec.name]!r} has {len(arrays)} weight arrays, expected 2")
        params[spec.name] = {"kernel": arrays[0].astype(np.float32), "bias": arrays[1].astype(np.float32)}
        bad = [k for k, a in params[spec.name].items() if not np.isfinite(a).all()]
        if bad:
            # A trained Keras model never saves NaN or inf: damaged bytes or a diverged training did.
            raise CheckpointError(
                f"{path} looks damaged: it holds non-finite weights in layer {names[spec.name]!r} "
                f"({spec.name} {', '.join(bad)})"
            )
    return KerasModel(config=config, params=params, keras_names=names)


def keras_standardization(data_dir: str | os.PathLike | None, path: Path) -> tuple[Standardization, str]:
    """MNIST training-set mean and std, as the study standardized its inputs, and the data's source."""
    data = optional_mnist(data_dir)  # A folder that was named but does not load raises its own error.
    if data is None:
        raise DataError(
            f"{path.name} is a Keras model, whose inputs are standardized with MNIST's training set, and no MNIST "
            f"was found: pass --data-dir DIR (data_dir=...) or set {DATA_DIR_ENV} to a folder with the four IDX files"
        )
    return Standardization.fit(data.train_images), data.source


def load_keras_model(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> TrainedModel:
    """A `TrainedModel` from a Keras file of the study's CNN, standardized with MNIST's training set."""
    path = Path(path).absolute()
    keras_model = read_keras_file(path)
    model = init_model(keras_model.config, 0)
    expected = {
        name: {k: v.shape for k, v in p.items()} for name, p in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()
    }
    got = {name: {k: v.shape for k, v in p.items()} for name, p in keras_model.params.items()}
    if got != expected:
        bad = [
            f"{keras_model.keras_names[n]}: {got[n]} vs {expected[n]}" for n in expected if got.get(n) != expected[n]
        ]
        raise CheckpointError(f"{path}: weight shapes do not fit the layer config ({'; '.join(bad[:2])})")
    std, source = keras_standardization(data_dir, path)
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, keras_model.params))
    return TrainedModel(
        model=nnx.merge(graphdef, state),
        standardization=std,
        train_config={
            "source": f"keras:{path}",
            "keras_layers": keras_model.keras_names,
            "standardization_data": source,
        },
    )
