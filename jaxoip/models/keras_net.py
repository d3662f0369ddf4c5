"""Any Keras 3 model as a jaxoip network, run by Keras itself on its JAX backend.

`from_keras(model_or_path)` takes a `keras.Model` (Sequential or a functional graph with branches:
ResNet, Xception, MobileNet, ...) or a `.keras` / legacy Keras 2 `.h5` file. Nothing is reimplemented:
one functional view of the model, `keras.Model(inputs, [layer.output for every layer])`, is called with
`stateless_call(trainable, non_trainable, images)`, a pure JAX function, so the search differentiates and
compiles Keras's own computation. The weights are copied into `nnx.Param` / `nnx.BatchStat` variables, so
they travel as arguments of the compiled programs (not as constants), and the user's model is not changed.
Under `jax.jit` every output but the one asked for is dead code, which XLA drops.

Every layer with one output of shape (B, H, W, C) or (B, N) is a jaxoip layer, by its Keras name; the i-th
convolution, a max pooling right after it and the i-th dense layer also answer to the study's
`Conv2D_i`, `Max_Pool_i` and `Dense_i`. Leading `Rescaling` / `Normalization` layers become the model's
`Standardization` (jaxoip searches in the space after them); a model without them takes the
standardization it is given (`--input-scale`, `--data`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxoip._check import check_type
from jaxoip.data.mnist import Standardization, model_standardization
from jaxoip.errors import CheckpointError, JaxoipError
from jaxoip.models.cnn import LayerSpec, Network, NetworkSpec, TrainedModel
from jaxoip.models.im2col import im2col_convs, use_im2col
from jaxoip.models.network import find_layer

CONV_CLASSES = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose")
PREPROCESSING = ("Rescaling", "Normalization")
# A `keras.Model`; Keras is imported only when a Keras model is used.
KerasModel = Any


def import_keras():
    """Keras 3 on the JAX backend; one line naming the extra, or the backend to set, otherwise."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise CheckpointError("Keras models need Keras 3: pip install 'jaxoip[keras]'") from None
    if not str(getattr(keras, "__version__", "0")).startswith("3"):
        raise CheckpointError(
            f"Keras models need Keras 3, found Keras {keras.__version__}: pip install 'jaxoip[keras]'"
        )
    backend = keras.backend.backend()
    if backend != "jax":
        raise CheckpointError(
            f"Keras was imported with the {backend} backend; jaxoip runs Keras models on JAX: set KERAS_BACKEND=jax "
            "before Keras is first imported"
        )
    return keras


class _Graph:
    """The functional view, a static part of the network: hashed and compared by identity, so that one
    compiled program serves every call with this model."""

    def __init__(self, view, names: tuple[str, ...]):
        self.view = view
        self.index = {name: i for i, name in enumerate(names)}

    def __call__(self, trainable, non_trainable, images, until: str | tuple[str, ...]):
        """The output of layer `until`, or a tuple of the outputs of the layers `until` names."""
        with jax.numpy_rank_promotion("allow"):  # Keras's layers broadcast implicitly (PReLU).
            outputs, _ = self.view.stateless_call(trainable, non_trainable, images, training=False)
        if isinstance(until, tuple):
            return tuple(outputs[self.index[name]] for name in until)
        return outputs[self.index[until]]


class KerasNetwork(Network):
    """A Keras model run by Keras on JAX: `config` names its layers, `graph` computes them."""

    def __init__(self, graph: _Graph, trainable, non_trainable, config: NetworkSpec, im2col: bool | None = None):
        self.graph = graph
        self.im2col = im2col  # Convolutions as im2col matmuls (None: on a CPU); see jaxoip.models.im2col.
        self.trainable = nnx.List([nnx.Param(jnp.asarray(a)) for a in trainable])
        self.non_trainable = nnx.List([nnx.BatchStat(jnp.asarray(a)) for a in non_trainable])
        self.config = config

    def __call__(self, images, until: str | None = None, pre_activation: bool = False):
        """Output of layer `until` (default: the model's output) for standardized images (B, H, W, C).

        `pre_activation` changes nothing: Keras computes a layer's activation inside the layer.
        """
        name = self.config.layers[-1].name if until is None else find_layer(self.config, until).name
        return self._run(images, name)

    def activations(self, images, layers, pre_activation: bool = False) -> dict[str, jax.Array]:
        """{layer name: output} of several layers from one call of the functional view."""
        names = tuple(dict.fromkeys(find_layer(self.config, layer, None).name for layer in layers))
        return dict(zip(names, self._run(images, names)))

    def _run(self, images, until: str | tuple[str, ...]):
        trainable = [p[...] for p in self.trainable]
        non_trainable = [v[...] for v in self.non_trainable]
        run = lambda trainable, non_trainable, images: self.graph(trainable, non_trainable, images, until)
        return (im2col_convs(run) if use_im2col(self.im2col) else run)(trainable, non_trainable, images)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def load_keras_file(path: str | os.PathLike):
    """The `keras.Model` in a `.keras` or legacy `.h5` file, loaded by Keras itself (no training state)."""
    keras = import_keras()
    path = Path(path).absolute()
    if not path.is_file():
        raise CheckpointError(f"no Keras model file at {path}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - whatever Keras raises for a damaged or foreign file.
        raise CheckpointError(f"{path}: Keras cannot load it: {_one_line(e)}") from None


def _single_output(layer):
    """The layer's only output tensor, or None (shared layers, several outputs)."""
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    return out if hasattr(out, "shape") and not isinstance(out, (list, tuple)) else None


def _preprocessing(model, layers: list) -> tuple[list, Standardization | None]:
    """Leading Rescaling / Normalization layers (fed by the input, one after another) and the standardization
    they compute, composed in order: pixels -> (pixels - mean) / std, per channel."""
    channels = int(model.inputs[0].shape[-1])
    mean, std, taken = np.zeros(channels), np.ones(channels), []
    for layer in layers:
        if type(layer).__name__ not in PREPROCESSING:
            break
        if type(layer).__name__ == "Rescaling":  # x * scale + offset
            scale = np.broadcast_to(np.asarray(layer.scale, np.float64).ravel(), (channels,))
            offset = np.broadcast_to(np.asarray(layer.offset, np.float64).ravel(), (channels,))
            mean, std = mean - offset * std / scale, std / scale
        else:  # (x - m) / max(sqrt(v), epsilon)
            if getattr(layer, "invert", False) or tuple(np.atleast_1d(layer.axis)) not in ((-1,), (3,)):
                break
            m = np.broadcast_to(np.asarray(layer.mean, np.float64).ravel(), (channels,))
            v = np.broadcast_to(np.asarray(layer.variance, np.float64).ravel(), (channels,))
            mean, std = mean + m * std, std * np.maximum(np.sqrt(v), 1e-7)
        taken.append(layer)
    if not taken:
        return [], None
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"{model.name}: the input preprocessing gives a non-finite or zero scale")
    collapse = lambda v: float(v[0]) if (v == v[0]).all() else tuple(float(x) for x in v)  # noqa: E731
    return taken, Standardization(mean=collapse(mean), std=collapse(std))


def preprocessing_layers(model) -> list:
    """The model's leading Rescaling / Normalization layers, which jaxoip takes as its standardization."""
    layers = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]
    return _preprocessing(model, layers)[0] if getattr(model, "inputs", None) else []


def _spec(layer, shape: tuple[int, ...]) -> LayerSpec:
    cls = type(layer).__name__
    if len(shape) == 3 and cls in CONV_CLASSES:
        size = getattr(layer, "kernel_size", (1,))
        return LayerSpec(layer.name, "conv", size=shape[-1], kernel=max(1, int(size[0])))
    if len(shape) == 1 and cls == "Dense":
        return LayerSpec(layer.name, "dense", size=shape[-1])
    return LayerSpec(layer.name, "maps" if len(shape) == 3 else "units", size=shape[-1])


def study_aliases(specs: list[LayerSpec], classes: list[str]) -> tuple[tuple[str, str], ...]:
    """The study's names (`Conv2D_i`, `Max_Pool_i`, `Dense_i`) where they name no layer of their own."""
    names, aliases, conv, dense, previous = {s.name for s in specs}, [], 0, 0, None
    for s, cls in zip(specs, classes):
        alias = None
        if s.kind == "conv":
            conv += 1
            alias = f"Conv2D_{conv}"
        elif cls == "MaxPooling2D" and previous == "conv":
            alias = f"Max_Pool_{conv}"
        elif s.kind == "dense":
            dense += 1
            alias = f"Dense_{dense}"
        if alias and alias not in names:
            aliases.append((alias, s.name))
        previous = s.kind if cls not in ("Activation", "ReLU", "Dropout") else previous
    return tuple(aliases)


def keras_network(model, im2col: bool | None = None) -> tuple[KerasNetwork, Standardization | None]:
    """The network of a built `keras.Model` and the standardization of its leading preprocessing layers."""
    keras = import_keras()
    check_type("the model", model, keras.Model, " (a keras.Model, or a .keras/.h5 file)", CheckpointError)
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise CheckpointError(f"Keras model {model.name!r} is not built: call it on an image batch (or build it) first")
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or any(d is None for d in inputs[0].shape[1:]):
        shapes = [tuple(t.shape) for t in inputs]
        raise CheckpointError(f"Keras model {model.name!r} must take one batch of images (B, H, W, C), got {shapes}")
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    taken, std = _preprocessing(model, layers)
    start = _single_output(taken[-1]) if taken else inputs[0]
    kept, outputs = [], []
    for layer in layers[len(taken) :]:
        out = _single_output(layer)
        if out is not None and len(out.shape) in (2, 4) and all(d is not None for d in out.shape[1:]):
            kept.append(layer)
            outputs.append(out)
    if not kept:
        raise CheckpointError(f"Keras model {model.name!r} has no layer with image-map or vector outputs")
    try:
        view = keras.Model(start, outputs, name=f"{model.name}_jaxoip_view")
    except Exception as e:  # noqa: BLE001 - Keras refuses graphs it cannot cut at the preprocessing.
        raise CheckpointError(
            f"Keras model {model.name!r}: its layer outputs cannot be gathered: {_one_line(e)}"
        ) from None
    specs = [_spec(layer, tuple(int(d) for d in out.shape[1:])) for layer, out in zip(kept, outputs)]
    config = NetworkSpec(
        layers=tuple(specs),
        shapes=tuple(tuple(int(d) for d in out.shape[1:]) for out in outputs),
        input_shape=tuple(int(d) for d in start.shape[1:]),
        aliases=study_aliases(specs, [type(layer).__name__ for layer in kept]),
    )
    trainable = [np.array(v.numpy()) for v in view.trainable_variables]
    non_trainable = [np.array(v.numpy()) for v in view.non_trainable_variables]
    bad = [
        v.path
        for v, a in zip(view.weights, trainable + non_trainable)
        if a.dtype.kind == "f" and not np.isfinite(a).all()
    ]
    if bad:
        raise CheckpointError(f"Keras model {model.name!r} holds NaN or infinite weights ({', '.join(bad[:3])})")
    graph = _Graph(view, tuple(s.name for s in specs))
    network = KerasNetwork(graph, trainable, non_trainable, config, im2col)
    _probe(network, model.name)
    return network, std


def _probe(network: KerasNetwork, name: str):
    """Traces the network's gradient once on shapes only, so that a layer JAX cannot trace or differentiate
    (Python-side state, host callbacks) is refused in one line now rather than inside a search."""
    images = jax.ShapeDtypeStruct((1, *network.config.input_shape), jnp.float32)
    last = network.config.layers[-1].name
    try:
        jax.eval_shape(jax.grad(lambda x: network(x, until=last).sum()), images)
    except Exception as e:  # noqa: BLE001 - whatever a layer raises while traced.
        raise CheckpointError(
            f"Keras model {name!r} cannot run as a differentiable JAX function: {_one_line(e)}"
        ) from None


def from_keras(
    model_or_path: KerasModel | str | os.PathLike,
    standardization: Standardization | None = None,
    source: str | None = None,
    im2col: bool | None = None,
) -> TrainedModel:
    """Any Keras 3 model (or `.keras` / legacy `.h5` file) as a model for every jaxoip analysis.

    The model's leading Rescaling/Normalization layers are its standardization; without them
    `standardization` maps pixels to the model's inputs (`Standardization.parse("imagenet")`, ...). A model
    with neither is refused, except a 28x28x1 model, which takes the study's MNIST standardization.
    `im2col`: run the model's convolutions as im2col matmuls (default: on a CPU, where the search is then
    several times faster; BENCHMARKS.md).
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        source = source or f"keras:{Path(model_or_path).absolute()}"
        model_or_path = load_keras_file(model_or_path)
    network, own = keras_network(model_or_path, im2col)
    where = f"Keras model {model_or_path.name!r}"
    if own is not None and standardization is not None:
        raise JaxoipError(
            f"{where} standardizes its inputs itself (Rescaling/Normalization layers); give no standardization"
        )
    if own is not None:
        std, std_source = own.check(), "the model's Rescaling/Normalization layers"
    else:
        std, std_source = model_standardization(
            standardization,
            network.config.input_shape,
            f"{where} has no Rescaling/Normalization layers: say how pixels map to its inputs with --input-scale "
            "(0..1, -1..1, imagenet or MEAN,STD) or --data (fit on those images); in Python standardization="
            "Standardization.parse(...)",
        )
    return TrainedModel(
        model=network,
        standardization=std,
        train_config={"source": source or f"keras:{model_or_path.name}", "standardization_data": std_source},
    )
