"""Keras CNNs as jaxoip CNNs: `.keras` (Keras 3) and legacy `.h5` files, read with h5py (Keras is not needed).

Sequential models and functional ones (`keras.Model(inputs, outputs)`) whose layers form a single chain of
Conv2D (any padding and stride), MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
BatchNormalization, Activation, ReLU, Dropout, Flatten and Dense layers, after optional leading
Rescaling/Normalization layers, which become the model's standardization. Anything else is refused in
one line naming the layer.

A `.keras` file is a zip of `config.json` and `model.weights.h5`; a legacy `.h5` file holds the config
in the `model_config` attribute and the weights under `model_weights/<layer>`. Both map onto an explicit
`ModelConfig(layers=...)`. Layers keep their Keras names; the i-th convolution, a max pooling right after
it and the i-th dense layer also answer to the study's `Conv2D_i`, `Max_Pool_i` and `Dense_i`.
Keras flattens NHWC in row-major order, as `CNN` does, so dense kernels are used as stored.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import zipfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxoip.data.images import load_images
from jaxoip.data.mnist import DATA_DIR_ENV, Standardization, optional_mnist
from jaxoip.errors import CheckpointError, DataError
from jaxoip.models.cnn import WEIGHTS, LayerSpec, ModelConfig, TrainedModel, init_model, layer_aliases, layer_specs
from jaxoip.models.keras_net import from_keras, load_keras_file, preprocessing_layers


class NotAChain(CheckpointError):
    """A readable Keras model that is not a single chain of the layers this module converts."""


@dataclasses.dataclass(frozen=True)
class KerasModel:
    """A Keras CNN read from a file: the jaxoip config, the weights by layer name, the input preprocessing."""

    config: ModelConfig
    params: dict[str, dict[str, np.ndarray]]  # "conv2d" -> {"kernel": HWIO, "bias": ...}
    standardization: Standardization | None  # From leading Rescaling/Normalization layers; None without them.


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


def _positive_int(value, what: str, where: str) -> int:
    """A setting Keras takes as a positive integer; refused as Keras refuses it (no rounding, no default)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def _square(value, what: str, where: str) -> int:
    v = [value, value] if isinstance(value, int) else list(value)
    if len(v) != 2 or v[0] != v[1]:
        raise CheckpointError(f"{where}: only square {what}s are supported, got {value}")
    return _positive_int(v[0], what, where)


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


def parse_config(model_json: dict, source: str) -> tuple[ModelConfig, list[dict]]:
    """(jaxoip config, the leading Rescaling/Normalization layers' Keras configs) of a Keras model config.

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


_POOLS = {"MaxPooling2D": "max", "AveragePooling2D": "avg"}
_PREPROCESSING = ("Rescaling", "Normalization")


def _parse_config(model_json: dict, source: str) -> tuple[ModelConfig, list[dict]]:
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
    specs, preprocessing = [], []
    for layer in layers:
        kind, c = layer.get("class_name"), layer.get("config", {})
        name = c.get("name", "")
        where = f"{source}: layer {name!r} ({kind})"
        if c.get("data_format", "channels_last") != "channels_last":
            raise CheckpointError(f"{where}: only channels_last layers are supported")
        if kind == "InputLayer":
            continue
        if kind in _PREPROCESSING:
            if specs:
                raise CheckpointError(f"{where}: input preprocessing is supported only as the first layers")
            preprocessing.append(layer)
            continue
        spec = _layer_spec(kind, c, name, where)
        if spec is None:
            raise CheckpointError(
                f"{where} is not supported: jaxoip reads chains of Conv2D, MaxPooling2D, AveragePooling2D, "
                "GlobalAveragePooling2D, BatchNormalization, Activation, ReLU, Dropout, Flatten and Dense layers "
                "(after optional Rescaling/Normalization)"
            )
        specs.append(spec)
    if not specs:
        raise CheckpointError(f"{source}: the Keras model has no layers jaxoip reads")
    shape = _input_shape(layers, model_config) or (28, 28, 1)
    try:
        config = ModelConfig(input_shape=shape, layers=tuple(specs))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return config, preprocessing


def _layer_spec(kind: str, c: dict, name: str, where: str) -> LayerSpec | None:
    """The jaxoip layer of one Keras layer's config; None for a kind jaxoip does not read."""
    try:
        if kind == "Conv2D":
            if _square(c.get("dilation_rate", 1), "dilation", where) != 1 or c.get("groups", 1) != 1:
                raise CheckpointError(f"{where}: dilated or grouped convolutions are not supported")
            return LayerSpec(
                name,
                "conv",
                _positive_int(c["filters"], "filters", where),
                _square(c["kernel_size"], "kernel", where),
                _activation(c.get("activation"), where),
                stride=_square(c.get("strides", 1), "stride", where),
                padding=c.get("padding", "valid"),
            )
        if kind in _POOLS:
            size = _square(c.get("pool_size", 2), "pool", where)
            stride = _square(c.get("strides") or size, "pool stride", where)
            return LayerSpec(name, "pool", size, stride=stride, padding=c.get("padding", "valid"), pool=_POOLS[kind])
        if kind == "GlobalAveragePooling2D":
            if c.get("keepdims"):
                raise CheckpointError(f"{where}: keepdims=True is not supported")
            return LayerSpec(name, "gap")
        if kind == "BatchNormalization":
            if c.get("axis", -1) not in (-1, 3, [-1], [3]) or c.get("renorm"):
                raise CheckpointError(f"{where}: only batch normalization over the channels is supported")
            return LayerSpec(name, "batchnorm", epsilon=float(c.get("epsilon", 1e-3)))
        if kind == "Activation":
            return LayerSpec(name, "activation", activation=_activation(c.get("activation"), where))
        if kind == "ReLU":
            if c.get("max_value") is not None or c.get("negative_slope", 0) or c.get("threshold", 0):
                raise CheckpointError(f"{where}: only a plain ReLU (no max_value, slope or threshold) is supported")
            return LayerSpec(name, "activation", activation="relu")
        if kind in ("Dropout", "SpatialDropout2D"):
            return LayerSpec(name, "dropout", rate=float(c.get("rate", 0.0)))
        if kind == "Flatten":
            return LayerSpec(name, "flatten")
        if kind == "Dense":
            units = _positive_int(c["units"], "units", where)
            return LayerSpec(name, "dense", units, activation=_activation(c.get("activation"), where))
    except CheckpointError:  # A ValueError too, already naming the file and layer.
        raise
    except ValueError as e:  # LayerSpec's message names the layer, as `where` does already.
        raise CheckpointError(f"{where}: {str(e).removeprefix(f'layer {name!r}: ')}") from None
    return None


def _preprocessing_standardization(
    layers: list[dict], weights: dict[str, list[np.ndarray]], channels: int, source: str
) -> Standardization | None:
    """The standardization that leading Rescaling and Normalization layers compute, composed in order:
    pixels -> (pixels - mean) / std, per channel."""
    if not layers:
        return None
    mean, std = np.zeros(channels), np.ones(channels)
    for layer in layers:
        c, name = layer.get("config", {}), layer.get("config", {}).get("name", "?")
        where = f"{source}: layer {name!r} ({layer.get('class_name')})"
        try:
            if layer["class_name"] == "Rescaling":  # x * scale + offset
                scale = np.broadcast_to(np.asarray(c.get("scale", 1.0), np.float64), (channels,))
                offset = np.broadcast_to(np.asarray(c.get("offset", 0.0), np.float64), (channels,))
                mean, std = mean - offset * std / scale, std / scale
            else:  # (x - m) / max(sqrt(v), 1e-7), Keras's Normalization
                if c.get("invert") or c.get("axis", [-1]) not in (-1, [-1], 3, [3]):
                    raise CheckpointError(f"{where}: only a per-channel, non-inverted Normalization is supported")
                stored = weights.get(name, [])
                m = c.get("mean") if c.get("mean") is not None else stored[0]
                v = c.get("variance") if c.get("variance") is not None else stored[1]
                m = np.broadcast_to(np.asarray(m, np.float64).ravel(), (channels,))
                v = np.broadcast_to(np.asarray(v, np.float64).ravel(), (channels,))
                mean, std = mean + m * std, std * np.maximum(np.sqrt(v), 1e-7)
        except (IndexError, ValueError, TypeError):
            raise CheckpointError(f"{where}: its mean and variance cannot be read") from None
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"{source}: the input preprocessing gives a non-finite or zero scale")
    collapse = lambda v: float(v[0]) if (v == v[0]).all() else tuple(float(x) for x in v)  # noqa: E731
    return Standardization(mean=collapse(mean), std=collapse(std))


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
        except (OSError, KeyError, ValueError, AttributeError, TypeError) as e:  # TypeError: scalar weight names.
            raise CheckpointError(f"{path} is not a readable Keras HDF5 model: {e}") from None
    return model_json, weights


_WEIGHT_NAMES = {"conv": ("kernel", "bias"), "dense": ("kernel", "bias")}


def _layer_weights(spec: LayerSpec, arrays: list[np.ndarray], keras_config: dict, where: str) -> dict[str, np.ndarray]:
    """The jaxoip variables of one layer from its Keras weight arrays (in Keras's order)."""
    try:
        arrays = [np.asarray(a, np.float32) for a in arrays]
    except (TypeError, ValueError):  # Strings or objects where numbers belong.
        raise CheckpointError(f"{where}: its weights are not numbers (a damaged file?)") from None
    if spec.kind in _WEIGHT_NAMES:
        if len(arrays) == 1 and not keras_config.get("use_bias", True):  # No bias: a zero one computes the same.
            arrays.append(np.zeros(arrays[0].shape[-1], np.float32))
        if len(arrays) != 2:
            raise CheckpointError(f"{where}: {len(arrays)} weight arrays, expected 2")
        return dict(zip(_WEIGHT_NAMES[spec.kind], arrays))
    # BatchNormalization: [gamma if scale], [beta if center], moving mean, moving variance.
    names = [
        n for n, on in (("scale", keras_config.get("scale", True)), ("bias", keras_config.get("center", True))) if on
    ]
    names += ["mean", "var"]
    if len(arrays) != len(names):
        raise CheckpointError(f"{where}: {len(arrays)} weight arrays, expected {len(names)}")
    got = dict(zip(names, arrays))
    got.setdefault("scale", np.ones_like(got["mean"]))
    got.setdefault("bias", np.zeros_like(got["mean"]))
    return got


def read_keras_file(path: str | os.PathLike) -> KerasModel:
    """Reads a Keras CNN (Sequential or a functional chain of the supported layers); one line otherwise."""
    path = Path(path).absolute()
    if not path.is_file():
        raise CheckpointError(f"no Keras model file at {path}")
    model_json, weights = (_read_keras_v3 if path.suffix.lower() == ".keras" else _read_legacy_h5)(path)
    if not isinstance(model_json, dict):
        raise CheckpointError(f"{path}: the model config is not a Keras model description")
    try:
        config, preprocessing = parse_config(model_json, str(path))
    except CheckpointError as e:  # A readable model, but not a chain of the layers read here.
        raise NotAChain(str(e)) from None
    keras_configs = _layer_configs(model_json)
    params = {}
    for spec in layer_specs(config):
        if spec.kind not in ("conv", "dense", "batchnorm"):
            continue
        where = f"{path}: layer {spec.name!r}"
        params[spec.name] = _layer_weights(spec, weights.get(spec.name, []), keras_configs.get(spec.name, {}), where)
        bad = [k for k, a in params[spec.name].items() if not np.isfinite(a).all()]
        if bad:
            # A trained Keras model never saves NaN or inf: damaged bytes or a diverged training did.
            raise CheckpointError(
                f"{path} looks damaged: it holds non-finite weights in layer {spec.name!r} ({', '.join(bad)})"
            )
    std = _preprocessing_standardization(preprocessing, weights, config.input_shape[-1], str(path))
    return KerasModel(config=config, params=params, standardization=std)


def _layer_configs(model_json: dict) -> dict[str, dict]:
    config = model_json.get("config", {})
    layers = config if isinstance(config, list) else config.get("layers", []) if isinstance(config, dict) else []
    return {layer.get("config", {}).get("name", ""): layer.get("config", {}) for layer in layers}


def keras_standardization(
    data_dir: str | os.PathLike | None, path: Path, data: str | os.PathLike | None = None
) -> tuple[Standardization, str]:
    """The training set's mean and std, as the study standardized its inputs, and the data's source: the
    images at `data` (any set `load_images` reads) when given, else MNIST from `data_dir`."""
    if data is not None:
        images = load_images(data)
        return Standardization.fit(images.train_images), images.source
    found = optional_mnist(data_dir)  # A folder that was named but does not load raises its own error.
    if found is None:
        raise DataError(
            f"{path.name} is a Keras model without Rescaling/Normalization layers, whose inputs are standardized "
            f"with the training set, and no MNIST was found: pass --data-dir DIR (data_dir=...) or set "
            f"{DATA_DIR_ENV} to a folder with the four IDX files, or --data PATH for other images"
        )
    return Standardization.fit(found.train_images), found.source


def load_keras_model(
    path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    input_scale: Standardization | None = None,
) -> TrainedModel:
    """A `TrainedModel` from a Keras file. Leading Rescaling/Normalization layers are its standardization;
    without them `input_scale`, else the training images at `data`, else (the study's way) MNIST's training set.

    A single chain of the layers this module reads becomes the built-in CNN (its search runs several times
    faster on a CPU, BENCHMARKS.md); any other model, branches included, runs through Keras itself
    (`jaxoip.models.keras_net.from_keras`).
    """
    path = Path(path).absolute()
    try:
        keras_model = read_keras_file(path)
    except NotAChain as native:
        if importlib.util.find_spec("keras") is None:
            raise CheckpointError(f"{native}; other Keras models need Keras 3: pip install 'jaxoip[keras]'") from None
        return _through_keras(path, data_dir, data, input_scale)
    # Shapes only: a config whose layers are far larger than the weights the file holds allocates nothing.
    abstract = nnx.eval_shape(lambda: init_model(keras_model.config, 0))
    expected = {
        name: {k: tuple(v.shape) for k, v in p.items()}
        for name, p in nnx.to_pure_dict(nnx.state(abstract, WEIGHTS)).items()
    }
    got = {name: {k: v.shape for k, v in p.items()} for name, p in keras_model.params.items()}
    if got != expected:
        bad = [f"{n}: {got.get(n)} vs {expected[n]}" for n in expected if got.get(n) != expected[n]]
        raise CheckpointError(f"{path}: weight shapes do not fit the layer config ({'; '.join(bad[:2])})")
    model = init_model(keras_model.config, 0)
    if keras_model.standardization is not None:
        if input_scale is not None:
            raise CheckpointError(
                f"{path.name} standardizes its inputs itself (Rescaling/Normalization); drop --input-scale"
            )
        std, source = keras_model.standardization, "the model's Rescaling/Normalization layers"
    elif input_scale is not None:
        std, source = input_scale, "--input-scale"
    else:
        std, source = keras_standardization(data_dir, path, data)
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.device_put(keras_model.params))  # Not jnp.asarray: no program per shape.
    names = {s.name: s.name for s in layer_specs(keras_model.config)}
    return TrainedModel(
        model=nnx.merge(graphdef, state),
        standardization=std,
        train_config={
            "source": f"keras:{path}",
            "keras_layers": {**names, **layer_aliases(keras_model.config)},
            "standardization_data": source,
        },
    )


def _through_keras(path: Path, data_dir, data, input_scale: Standardization | None) -> TrainedModel:
    """A Keras file that is not a single chain of the layers read here, run by Keras on its JAX backend."""
    model = load_keras_file(path)
    std = input_scale
    if std is None and data is not None and not preprocessing_layers(model):
        std = keras_standardization(data_dir, path, data)[0]
    return from_keras(model, std, source=f"keras:{path}")
