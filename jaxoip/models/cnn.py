"""The built-in CNN in Flax NNX: any chain of convolution, pooling, normalization and dense layers, every
layer addressable by name. The study's network is the default.

A `ModelConfig` describes the chain either compactly, as the study's lists (`conv`, `pool`, `dense`:
valid stride-1 convolutions, each followed by its max pooling, then a flatten and dense layers), or as
explicit `layers` (`LayerSpec`s, e.g. read from a Keras file), which add `same` padding, strides, average
and global-average pooling, batch normalization (inference statistics), dropout (inert at inference) and
separate activation layers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Key, PyTree, Shaped

from jaxoip import numerics, passes
from jaxoip._check import check_finite_images, check_type
from jaxoip.data.mnist import Standardization
from jaxoip.errors import DivergenceError, LayerError
from jaxoip.models.network import Layer, Network, find_layer  # noqa: F401 - Network was defined here.
from jaxoip.models.spec import (  # noqa: F401 - the layer specs were defined here; they are still found here.
    ACTIVATIONS,
    KINDS,
    MAP_KINDS,
    SEARCH_KINDS,
    VECTOR_KINDS,
    LayerKind,
    LayerSpec,
    ModelConfig,
    NetworkSpec,
    activation_name,
    activation_source,
    chain_shapes,
    check_activation,
    check_model_config,
    compact_specs,
    get_layer,
    layer_aliases,
    layer_names,
    layer_shapes,
    layer_specs,
    receptive_field,
    same_padding,
    window_out,
)

# The variables a trained network is: parameters and batch-normalization statistics (what checkpoints hold).
WEIGHTS = (nnx.Param, nnx.BatchStat)
# The functions of the activations `jaxoip.models.spec.ACTIVATIONS` names.
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "linear": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,
}


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: str = "valid") -> jax.Array:
    """2-D convolution of NHWC images with an HWIO kernel, as im2col on every backend.

    Shifted (strided) slices are concatenated and multiplied by the kernel in one matmul at the current
    precision (`numerics.matmul`). One implementation everywhere, chosen by measurement: XLA:CPU runs
    the gradient convolutions of `lax.conv` inside `lax.scan` loops over 10x slower (jax-ml/jax#12868),
    and on an H100 im2col ran the OIP search faster than cuDNN (1.49 M vs 1.14 M image-steps/s at
    default precision, 1.16 M vs 0.75 M at highest; issue 8).
    """
    kh, kw, c_in, c_out = kernel.shape
    if padding == "same":
        pads = [(0, 0)] * (x.ndim - 3)
        pads += [same_padding(x.shape[-3], kh, stride), same_padding(x.shape[-2], kw, stride), (0, 0)]
        x = jnp.pad(x, pads)
    h, w = (x.shape[-3] - kh) // stride + 1, (x.shape[-2] - kw) // stride + 1
    rows, cols = (h - 1) * stride + 1, (w - 1) * stride + 1
    patches = jnp.concatenate(
        [x[..., a : a + rows : stride, b : b + cols : stride, :] for a in range(kh) for b in range(kw)], axis=-1
    )
    return numerics.matmul(patches, kernel.reshape(kh * kw * c_in, c_out))


class Conv(nnx.Module):
    """2-D convolution with bias; parameters `kernel` (HWIO) and `bias` like `nnx.Conv`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        kernel_init,
        rngs: nnx.Rngs,
        stride: int = 1,
        padding: str = "valid",
    ):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.stride, self.padding = stride, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...], self.stride, self.padding) + self.bias[...][None, None, None, :]


class BatchNorm(nnx.Module):
    """Batch normalization with its inference statistics (`mean`, `var` as `nnx.BatchStat`), like Keras's."""

    def __init__(self, features: int, epsilon: float = 1e-3):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1,) * (x.ndim - 1) + (-1,)
        factor = (self.scale[...] * jax.lax.rsqrt(self.var[...] + self.epsilon)).reshape(shape)
        return (x - self.mean[...].reshape(shape)) * factor + self.bias[...].reshape(shape)


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


def pool2d(x: jax.Array, spec: LayerSpec) -> jax.Array:
    """Max or average pooling of NHWC maps with the spec's window, stride and padding (Keras semantics:
    'same' average pooling divides by the number of pixels inside the image)."""
    size, stride = spec.size, spec.stride
    if stride == size and spec.padding == "valid":
        if spec.pool == "max":
            return max_pool(x, size)
        b, h, w, c = x.shape
        h2, w2 = h // size, w // size
        return x[:, : h2 * size, : w2 * size].reshape(b, h2, size, w2, size, c).mean(axis=(2, 4))
    window, strides = (1, size, size, 1), (1, stride, stride, 1)
    pads = [(0, 0), (0, 0), (0, 0), (0, 0)]
    if spec.padding == "same":
        pads[1], pads[2] = same_padding(x.shape[1], size, stride), same_padding(x.shape[2], size, stride)
    if spec.pool == "max":
        out = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
        nan = jax.lax.reduce_window(jnp.isnan(x).astype(x.dtype), 0.0, jax.lax.max, window, strides, pads)
        return jnp.where(nan > 0, jnp.nan, out)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    count = jax.lax.reduce_window(jnp.ones_like(x[:1, ..., :1]), 0.0, jax.lax.add, window, strides, pads)
    return total / count


class CNN(Network):
    """The built-in CNN. Keras-like initialization (Glorot-uniform kernels, zero biases)."""

    def __init__(self, config: ModelConfig = ModelConfig(), *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.glorot_uniform()
        channels = config.input_shape[-1]
        for s, shape in zip(layer_specs(config), chain_shapes(layer_specs(config), config.input_shape)):
            if s.name in _MODULE_ATTRIBUTES:
                raise LayerError(f"layer name {s.name!r} is taken by the module itself; rename the layer")
            if s.kind == "conv":
                setattr(
                    self,
                    s.name,
                    Conv(channels, s.size, s.kernel, kernel_init=init, rngs=rngs, stride=s.stride, padding=s.padding),
                )
            elif s.kind == "dense":
                setattr(self, s.name, nnx.Linear(channels, s.size, kernel_init=init, rngs=rngs))
            elif s.kind == "batchnorm":
                setattr(self, s.name, BatchNorm(channels, s.epsilon))
            channels = shape[-1]

    @property
    def rebuildable(self) -> bool:
        return True

    def __call__(self, images, until: str | None = None, pre_activation: bool = False):
        """Output of layer `until` (default: the last) for a batch of standardized images (B, H, W, C).

        `pre_activation` returns the layer's value before its activation (logits for the last layer; for
        a pooling, the pooled pre-activations of the convolution below).
        """
        specs = layer_specs(self.config)
        target = find_layer(self.config, until).index if until else len(specs) - 1
        skip = activation_source(specs, target) if pre_activation else None
        x = images
        for i, s in enumerate(specs[: target + 1]):
            x = self._apply(s, x, activate=i != skip)  # Dropout is inert at inference.
        return x

    def activations(self, images, layers, pre_activation: bool = False) -> dict[str, jax.Array]:
        """{layer name: output} of several layers in one pass through the chain (see `Network.activations`)."""
        if pre_activation:  # Each layer skips its own activation: one pass per layer.
            return super().activations(images, layers, pre_activation)
        wanted = {find_layer(self.config, layer, None).index for layer in layers}
        specs, out, x = layer_specs(self.config), {}, images
        for i, s in enumerate(specs[: max(wanted, default=-1) + 1]):
            x = self._apply(s, x)
            if i in wanted:
                out[s.name] = x
        return out

    def _apply(self, s: LayerSpec, x: jax.Array, activate: bool = True) -> jax.Array:
        """One layer, with its activation unless `activate` is False (a pre-activation view)."""
        if s.kind in ("conv", "batchnorm"):
            x = getattr(self, s.name)(x)
        elif s.kind == "dense":
            layer = getattr(self, s.name)
            x = numerics.matmul(x, layer.kernel[...]) + layer.bias[...][None, :]
        elif s.kind == "pool":
            x = pool2d(x, s)
        elif s.kind == "gap":
            x = x.mean(axis=(1, 2))
        elif s.kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        return _ACTIVATIONS[s.activation](x) if s.has_activation and activate else x


_MODULE_ATTRIBUTES = frozenset(dir(CNN)) | {"config"}


def map_activation(model: Network, images, layer_name: str, map_indices, pre_activation: bool = False) -> jax.Array:
    """Map `map_indices[i]` of map layer `layer_name` for image i: (N, H, W).

    For a convolution (and poolings right after it) of the built-in CNN, only the selected channel of
    the convolution is computed (a per-image kernel), so the last convolution costs 1/C of the full
    layer; equal to `model(images, until=layer_name)[i, ..., m]`, which is what other layers use.
    `pre_activation` skips the convolution's activation (pooling still follows).
    """
    specs = layer_specs(model.config)
    t = find_layer(model.config, layer_name, MAP_KINDS).index
    c = t
    while c > 0 and specs[c].kind in ("pool", "dropout"):
        c -= 1
    maps = jnp.asarray(map_indices)
    if not isinstance(model, CNN) or specs[c].kind != "conv":
        out = model(images, until=specs[t].name, pre_activation=pre_activation)
        return jnp.take_along_axis(out, maps[:, None, None, None], axis=-1)[..., 0]
    below = images if c == 0 else model(images, until=specs[c - 1].name)
    spec, conv = specs[c], getattr(model, specs[c].name)
    kernels = jnp.moveaxis(conv.kernel[...][..., maps], -1, 0)[..., None]  # (N, kh, kw, C_in, 1)
    out = jax.vmap(lambda h, k: conv2d(h[None], k, spec.stride, spec.padding)[0, ..., 0])(below, kernels)
    out = out + conv.bias[...][maps][:, None, None]
    if not pre_activation:
        out = _ACTIVATIONS[spec.activation](out)
    for s in specs[c + 1 : t + 1]:
        if s.kind == "pool":
            out = pool2d(out[..., None], s)[..., 0]
    return out


def init_model(config: ModelConfig = ModelConfig(), seed: int | Key[Array, ""] = 0) -> CNN:
    """A freshly initialized CNN; `seed` is an int or a PRNG key."""
    check_model_config(config)
    return CNN(config, rngs=nnx.Rngs(params=numerics.as_key(seed)))


def param_count(model: Network) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def layer_output(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: Float[ArrayLike, "n H W ch"],
    layer_name: str,
    pre_activation: bool = False,
) -> Float[Array, " n *layer"]:
    """Pure function: the activation of `layer_name` for a batch, computing only the layers up to it."""
    if not isinstance(images, jax.core.Tracer):  # Checked on the host; a traced call is the caller's.
        images = check_finite_images("the images", images)
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(params)):
            check_finite_weights(params, layer_name)
    return nnx.merge(graphdef, params)(images, until=layer_name, pre_activation=pre_activation)


def identity(acts):
    """The default per-batch reduction of `batched_layer_map`: the activations themselves."""
    return acts


@functools.partial(jax.jit, static_argnames=("graphdef", "layer_name", "fn", "precision"))
def _layer_map(params, x, *, graphdef, layer_name, fn, precision):
    """(params, one batch of images (B, ...)) -> fn(activations); one program per architecture, layer, `fn`,
    precision and batch shape (`jaxoip.passes.run_pass` runs it batch by batch)."""
    with numerics.precision_scope(precision):
        return fn(layer_output(graphdef, params, x, layer_name))


def pad_batches(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Host-side: `images` (N, ...) zero-padded and reshaped to (steps, batch_size, ...); returns it and N."""
    n = images.shape[0]
    steps = -(-n // batch_size)
    padded = np.zeros((steps * batch_size, *images.shape[1:]), images.dtype)
    padded[:n] = images
    return padded.reshape(steps, batch_size, *images.shape[1:]), n


# The images of one batch of a pass (`batched_layer_map`): full batches of the few images a scan passes (its
# start images, its best OIPs) are mostly padding, and a pass over a data set costs the same in any batch size.
PASS_BATCH = 128


def image_batches(images: np.ndarray, batch_size: int, pad: bool = False) -> tuple[np.ndarray, int]:
    """`pad_batches` of `images` in batches of `batch_size`, or in one smaller batch when there are fewer
    images, unless `pad`: then every batch has `batch_size` images, so an image's values do not depend on how
    many images are evaluated with it (XLA's CPU kernels block a batch by its size, and the last bits follow
    the blocking)."""
    return pad_batches(images, max(1, batch_size if pad else min(batch_size, images.shape[0])))


def batched_layer_map(
    model: Network,
    images: Float[ArrayLike, "n H W ch"],
    layer_name: str,
    fn: Callable[[Float[Array, " b *layer"]], PyTree[Shaped[Array, "b ..."]]] | None = None,
    batch_size: int = PASS_BATCH,
    precision: numerics.Precision = numerics.DEFAULT_PRECISION,
    pad: bool = False,
    cache: bool = False,
) -> Float[np.ndarray, " n *layer"] | PyTree[Shaped[np.ndarray, "n ..."]]:
    """`fn(activations of layer_name)` for all standardized `images`, batch by batch (`jaxoip.passes.run_pass`).

    `fn` maps a batch of activations (B, ...) to per-image results (B, ...); it lets callers reduce
    large layers (e.g. to per-map statistics) before they are gathered. It is a static argument of the
    compiled program: pass a module-level function (the same object on every call), not a fresh
    closure, or every call compiles anew. Returns NumPy arrays (or a tuple of them).

    Fewer images than `batch_size` make one smaller batch, unless `pad` (`image_batches`). `cache`: the result
    read from, or kept in, `jaxoip.passes` when it has a folder (for a pass over a data set, which recurs).
    """
    layer_name = find_layer(check_cnn(model).config, layer_name).name
    numerics.check_precision(precision)
    check_finite_weights(model, layer_name)
    graphdef, params = nnx.split(model)
    images = check_finite_images("the images", images).astype(np.float32)
    xs, n = image_batches(images, batch_size, pad)
    static = {"graphdef": graphdef, "layer_name": layer_name, "fn": fn or identity, "precision": precision}
    out = jax.tree.map(lambda a: a[:n], passes.run_pass(_layer_map, params, xs, static, cache))
    check_finite_outputs(model, out, layer_name)
    return out


def check_finite_weights(model: Network | nnx.State, layer_name: str):
    """Refuses a model with NaN or infinite weights before it is evaluated: compiled code may turn such
    values into finite ones (XLA's max of NaN and 0 can be 0), so checking the outputs is not enough."""
    params = nonfinite_parameters(model)
    if params:
        raise DivergenceError(
            f"non-finite values from layer {layer_name}: the model has NaN or infinite weights "
            f"({', '.join(params[:3])}{', ...' if len(params) > 3 else ''})"
        )


def check_finite_outputs(model: Network, out: PyTree[np.ndarray], layer_name: str):
    """Refuses non-finite results of finite images (so no NaN is reported as a finding), naming the cause."""
    check_finite_weights(model, layer_name)
    bad = [a for a in jax.tree.leaves(out) if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]
    if bad:
        raise DivergenceError(
            f"non-finite values from layer {layer_name}: the model computes NaN or infinity from finite images "
            "and finite weights (an overflow of float32, or an operation of the model such as 0/0 or log 0)"
        )


@dataclasses.dataclass
class TrainedModel:
    """A network with what it takes to use and trust it: input standardization and training provenance."""

    model: Network
    standardization: Standardization
    history: dict = dataclasses.field(default_factory=dict)
    train_config: dict = dataclasses.field(default_factory=dict)
    data_checksum: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> ModelConfig | NetworkSpec:
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
    """A `Network` (the `.model` of a `TrainedModel`)."""
    hint = "; pass its .model" if isinstance(model, TrainedModel) else " (the .model of a TrainedModel)"
    return check_type(name, model, Network, hint)


def nonfinite_parameters(model: nnx.Module | PyTree) -> list[str]:
    """The paths ("Conv2D_1.kernel") of the parameters that hold NaN or infinite values, checked on the host;
    `model` is a module or its parameters (an `nnx.State` or a pure dict, as a checkpoint holds them)."""
    params = nnx.state(model, WEIGHTS) if isinstance(model, nnx.Module) else model
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(getattr(leaf, "dtype", np.float32), jnp.inexact):  # Counts, keys: no NaN there.
            continue
        if not np.isfinite(np.asarray(leaf)).all():
            bad.append(".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).removesuffix(".value"))
    return bad
