"""The study's CNN in Flax NNX, with every layer addressable by name."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Key, PyTree, Shaped

from jaxoip import numerics
from jaxoip._check import check_finite_images, check_type
from jaxoip.data.mnist import Standardization
from jaxoip.errors import CheckpointError, DivergenceError, LayerError

LayerKind = Literal["conv", "pool", "flatten", "dense"]
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "linear": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Layer lists as in the study: conv (filters, kernel, activation), pool sizes, dense (units, activation).

    Pool `i` follows conv `i` where it exists; the dense layers follow a flatten.
    The defaults are the study's network (208,982 parameters).
    """

    conv: tuple[tuple[int, int, str], ...] = ((32, 3, "relu"), (64, 3, "relu"), (128, 3, "relu"))
    pool: tuple[int, ...] = (2, 2)
    dense: tuple[tuple[int, str], ...] = ((100, "relu"), (10, "softmax"))
    input_shape: tuple[int, int, int] = (28, 28, 1)

    def __post_init__(self):
        # Normalize lists (e.g. from JSON) to tuples so configs stay hashable and comparable.
        object.__setattr__(self, "conv", tuple(tuple(c) for c in self.conv))
        object.__setattr__(self, "pool", tuple(self.pool))
        object.__setattr__(self, "dense", tuple(tuple(d) for d in self.dense))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if len(self.pool) > len(self.conv):
            raise ValueError("more pool layers than conv layers")
        for _, _, act in self.conv:
            _check_activation(act)
        for _, act in self.dense:
            _check_activation(act)
        if not self.dense:
            raise ValueError("the network needs at least one dense (output) layer")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


# The input the search's noise recipes, the facets' shifts and the figures are written for so far.
SUPPORTED_INPUT = (28, 28, 1)


def check_supported_input(config: ModelConfig, where: str) -> None:
    """Refuses, at load, a model whose input is not 28x28x1: it would load, then fail deep in a search."""
    if tuple(config.input_shape) != SUPPORTED_INPUT:
        h, w, c = (tuple(config.input_shape) + (None,) * 3)[:3]
        raise CheckpointError(
            f"{where}: the model takes {h}x{w}x{c} images; jaxoip supports only 28x28x1 (MNIST-sized grayscale) "
            "models so far"
        )


def _check_activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    name: str
    kind: LayerKind
    size: int  # filters, pool size or units; 0 for flatten
    kernel: int = 0
    activation: str = "linear"


def layer_specs(config: ModelConfig) -> tuple[LayerSpec, ...]:
    """The layers in forward order, with the study's names."""
    check_model_config(config)
    specs = []
    for i, (filters, kernel, act) in enumerate(config.conv):
        specs.append(LayerSpec(f"Conv2D_{i + 1}", "conv", filters, kernel, act))
        if i < len(config.pool):
            specs.append(LayerSpec(f"Max_Pool_{i + 1}", "pool", config.pool[i]))
    specs.append(LayerSpec("Flatten", "flatten", 0))
    for i, (units, act) in enumerate(config.dense):
        specs.append(LayerSpec(f"Dense_{i + 1}", "dense", units, activation=act))
    return tuple(specs)


def layer_names(config: ModelConfig) -> tuple[str, ...]:
    return tuple(s.name for s in layer_specs(config))


def get_layer(config: ModelConfig, name: str, kinds: tuple[str, ...] | None = None) -> LayerSpec:
    """The spec of layer `name`; a clear error listing valid names otherwise."""
    check_type("a layer name", name, str, error=LayerError)
    specs = [s for s in layer_specs(config) if kinds is None or s.kind in kinds]
    for s in specs:
        if s.name == name:
            return s
    what = "layer" if kinds is None else "/".join(kinds) + " layer"
    raise LayerError(f"unknown {what} {name!r}; valid names: {', '.join(s.name for s in specs)}")


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch axis) of every layer."""
    h, w, c = check_model_config(config).input_shape
    shapes = {}
    for s in layer_specs(config):
        if s.kind == "conv":
            h, w, c = h - s.kernel + 1, w - s.kernel + 1, s.size
            shapes[s.name] = (h, w, c)
        elif s.kind == "pool":
            h, w = h // s.size, w // s.size
            shapes[s.name] = (h, w, c)
        elif s.kind == "flatten":
            c = h * w * c
            shapes[s.name] = (c,)
        else:
            c = s.size
            shapes[s.name] = (c,)
    return shapes


def receptive_field(config: ModelConfig, layer_name: str, i: int, j: int) -> tuple[int, int, int, int]:
    """Input rows [r0, r1) and columns [c0, c1) seen by node (i, j) of a conv or pool layer.

    Valid convolutions and non-overlapping pools, so the field is a square clipped to the image.
    """
    target = get_layer(config, layer_name, ("conv", "pool"))
    h, w, _ = layer_shapes(config)[layer_name]
    if not (0 <= i < h and 0 <= j < w):
        raise LayerError(f"node ({i}, {j}) is outside the {h}x{w} maps of {layer_name}")
    # Walk backwards from the layer: each node covers [start, start + size) of the layer below.
    r0, r1, c0, c1 = i, i + 1, j, j + 1
    specs = layer_specs(config)
    for s in reversed(specs[: specs.index(target) + 1]):
        if s.kind == "conv":
            r1, c1 = r1 + s.kernel - 1, c1 + s.kernel - 1
        elif s.kind == "pool":
            r0, r1, c0, c1 = r0 * s.size, r1 * s.size, c0 * s.size, c1 * s.size
    H, W, _ = config.input_shape
    return max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Valid, stride-1 convolution of NHWC images with an HWIO kernel, as im2col on every backend.

    Shifted slices are concatenated and multiplied by the kernel in one matmul at the current
    precision (`numerics.matmul`). One implementation everywhere, chosen by measurement: XLA:CPU runs
    the gradient convolutions of `lax.conv` inside `lax.scan` loops over 10x slower (jax-ml/jax#12868),
    and on an H100 im2col ran the OIP search faster than cuDNN (1.49 M vs 1.14 M image-steps/s at
    default precision, 1.16 M vs 0.75 M at highest; issue 8).
    """
    kh, kw, c_in, c_out = kernel.shape
    h, w = x.shape[-3] - kh + 1, x.shape[-2] - kw + 1
    patches = jnp.concatenate([x[..., a : a + h, b : b + w, :] for a in range(kh) for b in range(kw)], axis=-1)
    return numerics.matmul(patches, kernel.reshape(kh * kw * c_in, c_out))


class Conv(nnx.Module):
    """Valid 2-D convolution with bias; parameters `kernel` (HWIO) and `bias` like `nnx.Conv`."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, kernel_init, rngs: nnx.Rngs):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...]) + self.bias[...][None, None, None, :]


def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping max pooling (floor mode), as a reshape and max.

    Same values as `lax.reduce_window`, but its gradient avoids XLA's select-and-scatter,
    which makes training and the OIP search about 2x faster on CPU. A NaN in a window gives NaN.
    """
    b, h, w, c = x.shape
    h2, w2 = h // size, w // size
    windows = x[:, : h2 * size, : w2 * size].reshape(b, h2, size, w2, size, c)
    # XLA:CPU's vectorized max reduction skips NaNs (a window of NaNs gives -inf, so a model with NaN
    # weights reported finite probabilities): put them back, so that a NaN always propagates.
    return jnp.where(jnp.isnan(windows).any(axis=(2, 4)), jnp.nan, windows.max(axis=(2, 4)))


class CNN(nnx.Module):
    """The study's CNN. Keras-like initialization (Glorot-uniform kernels, zero biases)."""

    def __init__(self, config: ModelConfig = ModelConfig(), *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.glorot_uniform()
        channels = config.input_shape[-1]
        for s, shape in zip(layer_specs(config), layer_shapes(config).values()):
            if s.kind == "conv":
                setattr(self, s.name, Conv(channels, s.size, s.kernel, kernel_init=init, rngs=rngs))
            elif s.kind == "dense":
                setattr(self, s.name, nnx.Linear(channels, s.size, kernel_init=init, rngs=rngs))
            channels = shape[-1]

    def __call__(self, images, until: str | None = None, pre_activation: bool = False):
        """Output of layer `until` (default: the last) for a batch of standardized images (B, H, W, C).

        `pre_activation` returns the layer's value before its activation (logits for the last layer).
        """
        specs = layer_specs(self.config)
        target = get_layer(self.config, until) if until else specs[-1]
        x = images
        for s in specs:
            if s.kind == "conv":
                x = getattr(self, s.name)(x)
            elif s.kind == "dense":
                layer = getattr(self, s.name)
                x = numerics.matmul(x, layer.kernel[...]) + layer.bias[...][None, :]
            if s.kind in ("conv", "dense"):
                if s.name == target.name and pre_activation:
                    return x
                x = _ACTIVATIONS[s.activation](x)
            elif s.kind == "pool":
                x = max_pool(x, s.size)
            else:
                x = x.reshape(x.shape[0], -1)
            if s.name == target.name:
                return x
        raise AssertionError("unreachable")


def map_activation(model: CNN, images, layer_name: str, map_indices, pre_activation: bool = False) -> jax.Array:
    """Map `map_indices[i]` of conv or pool layer `layer_name` for image i: (N, H, W).

    Computes only the selected channel of the layer's convolution (a per-image kernel), so the
    last convolution costs 1/C of the full layer; equal to `model(images, until=layer_name)[i, ..., m]`.
    `pre_activation` skips the convolution's activation (pooling still follows).
    """
    specs = layer_specs(model.config)
    target = [s.name for s in specs].index(get_layer(model.config, layer_name, ("conv", "pool")).name)
    c = target
    while specs[c].kind == "pool":
        c -= 1
    below = images if c == 0 else model(images, until=specs[c - 1].name)
    conv = getattr(model, specs[c].name)
    maps = jnp.asarray(map_indices)
    kernels = jnp.moveaxis(conv.kernel[...][..., maps], -1, 0)[..., None]  # (N, kh, kw, C_in, 1)
    out = jax.vmap(lambda h, k: conv2d(h[None], k)[0, ..., 0])(below, kernels)
    out = out + conv.bias[...][maps][:, None, None]
    if not pre_activation:
        out = _ACTIVATIONS[specs[c].activation](out)
    for s in specs[c + 1 : target + 1]:
        out = max_pool(out[..., None], s.size)[..., 0]
    return out


def init_model(config: ModelConfig = ModelConfig(), seed: int | Key[Array, ""] = 0) -> CNN:
    """A freshly initialized CNN; `seed` is an int or a PRNG key."""
    check_model_config(config)
    return CNN(config, rngs=nnx.Rngs(params=numerics.as_key(seed)))


def param_count(model: CNN) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def layer_output(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: Float[ArrayLike, "n H W ch"],
    layer_name: str,
    pre_activation: bool = False,
) -> Float[Array, " n *layer"]:
    """Pure function: the activation of `layer_name` for a batch, computing only the layers up to it."""
    return nnx.merge(graphdef, params)(images, until=layer_name, pre_activation=pre_activation)


def identity(acts):
    """The default per-batch reduction of `batched_layer_map`: the activations themselves."""
    return acts


@functools.partial(jax.jit, static_argnames=("graphdef", "layer_name", "fn", "precision"))
def _layer_map(params, xs, *, graphdef, layer_name, fn, precision):
    """(params, image batches (steps, B, ...)) -> fn(activations), flattened over steps; one program per
    architecture, layer, `fn`, precision and shape."""
    with numerics.precision_scope(precision):
        out = jax.lax.map(lambda x: fn(layer_output(graphdef, params, x, layer_name)), xs)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)


def pad_batches(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Host-side: `images` (N, ...) zero-padded and reshaped to (steps, batch_size, ...); returns it and N."""
    n = images.shape[0]
    steps = -(-n // batch_size)
    padded = np.zeros((steps * batch_size, *images.shape[1:]), images.dtype)
    padded[:n] = images
    return padded.reshape(steps, batch_size, *images.shape[1:]), n


def batched_layer_map(
    model: CNN,
    images: Float[ArrayLike, "n H W ch"],
    layer_name: str,
    fn: Callable[[Float[Array, " b *layer"]], PyTree[Shaped[Array, "b ..."]]] | None = None,
    batch_size: int = 500,
    precision: numerics.Precision = numerics.DEFAULT_PRECISION,
) -> Float[np.ndarray, " n *layer"] | PyTree[Shaped[np.ndarray, "n ..."]]:
    """`fn(activations of layer_name)` for all standardized `images`, batch by batch in one jitted `lax.map`.

    `fn` maps a batch of activations (B, ...) to per-image results (B, ...); it lets callers reduce
    large layers (e.g. to per-map statistics) before they are gathered. It is a static argument of the
    compiled program: pass a module-level function (the same object on every call), not a fresh
    closure, or every call compiles anew. Returns NumPy arrays (or a tuple of them).
    """
    get_layer(check_cnn(model).config, layer_name)
    numerics.check_precision(precision)
    graphdef, params = nnx.split(model)
    images = check_finite_images("the images", images).astype(np.float32)
    batch_size = max(1, min(batch_size, images.shape[0]))
    xs, n = pad_batches(images, batch_size)
    out = _layer_map(params, xs, graphdef=graphdef, layer_name=layer_name, fn=fn or identity, precision=precision)
    out = jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out))
    check_finite_outputs(model, out, layer_name)
    return out


def check_finite_outputs(model: CNN, out: PyTree[np.ndarray], layer_name: str):
    """Refuses non-finite results of finite images (so no NaN is reported as a finding), naming the cause."""
    bad = [a for a in jax.tree.leaves(out) if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]
    if not bad:
        return
    params = nonfinite_parameters(model)
    cause = (
        f"the model has NaN or infinite weights ({', '.join(params[:3])}{', ...' if len(params) > 3 else ''})"
        if params
        else "the activations overflow float32"
    )
    raise DivergenceError(f"non-finite values from layer {layer_name}: {cause}")


@dataclasses.dataclass
class TrainedModel:
    """A CNN with what it takes to use and trust it: input standardization and training provenance."""

    model: CNN
    standardization: Standardization
    history: dict = dataclasses.field(default_factory=dict)
    train_config: dict = dataclasses.field(default_factory=dict)
    data_checksum: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def split(self) -> tuple[nnx.GraphDef, nnx.State]:
        """(graphdef, params) for the pure functions of this package."""
        return nnx.split(self.model)

    def layer_output(
        self, pixels: Float[ArrayLike, "n H W ch"], layer_name: str, pre_activation: bool = False
    ) -> Float[Array, " n *layer"]:
        """Activation of `layer_name` for images in pixel units."""
        graphdef, params = self.split()
        if not isinstance(pixels, jax.core.Tracer):  # Checked on the host; a traced call is the caller's.
            pixels = check_finite_images("the images", pixels)
        x = self.standardization(jnp.asarray(pixels, jnp.float32))
        return layer_output(graphdef, params, x, layer_name, pre_activation)


# --- Argument checks of the public functions that take a model (one line for a wrong type) ---------------


def check_trained(trained, name: str = "the model"):
    """A `TrainedModel` (what `load_model` and `load_reference_model` return)."""
    return check_type(name, trained, TrainedModel, " (from jaxoip.load_model or jaxoip.load_reference_model)")


def check_cnn(model, name: str = "the model"):
    """A `CNN` (the `.model` of a `TrainedModel`)."""
    hint = "; pass its .model" if isinstance(model, TrainedModel) else " (the .model of a TrainedModel)"
    return check_type(name, model, CNN, hint)


def check_model_config(config):
    """A `ModelConfig`."""
    return check_type("the model config", config, ModelConfig)


def nonfinite_parameters(model: nnx.Module | PyTree) -> list[str]:
    """The paths ("Conv2D_1.kernel") of the parameters that hold NaN or infinite values, checked on the host;
    `model` is a module or its parameters (an `nnx.State` or a pure dict, as a checkpoint holds them)."""
    params = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not np.isfinite(np.asarray(leaf)).all():
            bad.append(".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).removesuffix(".value"))
    return bad
