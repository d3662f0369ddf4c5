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
import difflib
import functools
import math
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
from jaxoip.errors import DivergenceError, LayerError

LayerKind = Literal["conv", "pool", "gap", "batchnorm", "activation", "dropout", "flatten", "dense", "maps", "units"]
# Layers whose output is a stack of (H, W) maps: what exemplars, grids and map searches take.
MAP_KINDS = ("conv", "pool", "batchnorm", "activation", "dropout", "maps")
# Layers with one value per unit (a vector per image).
VECTOR_KINDS = ("gap", "dense", "units")
# Layers an OIP search can target: the map layers and the vector layers.
SEARCH_KINDS = (*MAP_KINDS, *VECTOR_KINDS)
_KINDS = ("conv", "pool", "gap", "batchnorm", "activation", "dropout", "flatten", "dense", "maps", "units")
# The variables a trained network is: parameters and batch-normalization statistics (what checkpoints hold).
WEIGHTS = (nnx.Param, nnx.BatchStat)
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "linear": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,
}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of the chain. `size`: filters (conv), units (dense) or window (pool); `stride` 0 means the
    kind's default (1 for a convolution, the window for a pooling)."""

    name: str
    kind: LayerKind
    size: int = 0
    kernel: int = 0
    activation: str = "linear"
    stride: int = 0
    padding: Literal["valid", "same"] = "valid"
    pool: Literal["max", "avg"] = "max"
    rate: float = 0.0  # dropout
    epsilon: float = 1e-3  # batch normalization

    def __post_init__(self):
        if self.stride == 0:
            object.__setattr__(self, "stride", self.size if self.kind == "pool" else 1)
        where = f"layer {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{where}: a layer needs a name")
        if self.kind not in _KINDS:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; choose from {', '.join(_KINDS)}")
        _check_activation(self.activation)
        if self.padding not in ("valid", "same") or self.pool not in ("max", "avg"):
            raise ValueError(f"{where}: padding is 'valid' or 'same', pool is 'max' or 'avg'")
        if self.kind in ("conv", "dense", "pool") and self.size < 1:
            raise ValueError(f"{where}: {self.kind} needs a positive size")
        if self.kind == "conv" and self.kernel < 1 or self.stride < 1:
            raise ValueError(f"{where}: kernel and stride must be positive")
        if not (0.0 <= self.rate < 1.0) or not self.epsilon > 0:
            raise ValueError(f"{where}: dropout rate must be in [0, 1) and epsilon positive")

    @property
    def has_activation(self) -> bool:
        """Whether this layer applies an activation that `pre_activation` can skip."""
        return self.kind in ("conv", "dense", "activation")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A chain of layers; by default the study's network (208,982 parameters).

    Compact form (the study's): `conv` (filters, kernel, activation), `pool` sizes (pool `i` follows conv
    `i` where it exists), `dense` (units, activation) after a flatten; layers named `Conv2D_i`,
    `Max_Pool_i`, `Flatten`, `Dense_i`. Or explicit `layers` (then `conv`, `pool` and `dense` are unused).
    """

    conv: tuple[tuple[int, int, str], ...] = ((32, 3, "relu"), (64, 3, "relu"), (128, 3, "relu"))
    pool: tuple[int, ...] = (2, 2)
    dense: tuple[tuple[int, str], ...] = ((100, "relu"), (10, "softmax"))
    input_shape: tuple[int, int, int] = (28, 28, 1)
    layers: tuple[LayerSpec, ...] = ()

    def __post_init__(self):
        # Normalize lists (e.g. from JSON) to tuples so configs stay hashable and comparable.
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (height, width, channels), got {self.input_shape}")
        if self.layers:
            layers = tuple(s if isinstance(s, LayerSpec) else LayerSpec(**s) for s in self.layers)
            object.__setattr__(self, "layers", layers)
            object.__setattr__(self, "conv", ())
            object.__setattr__(self, "pool", ())
            object.__setattr__(self, "dense", ())
            names = [s.name for s in layers]
            if len(set(names)) != len(names):
                raise ValueError("layer names must be unique")
            odd = [n for n in names if not n.isidentifier()]
            if odd:  # They name the module's attributes.
                raise ValueError(f"layer name {odd[0]!r} is not a Python identifier")
            _chain_shapes(layers, self.input_shape)  # Raises on a chain that does not fit together.
            return
        object.__setattr__(self, "conv", tuple(tuple(c) for c in self.conv))
        object.__setattr__(self, "pool", tuple(self.pool))
        object.__setattr__(self, "dense", tuple(tuple(d) for d in self.dense))
        if len(self.pool) > len(self.conv):
            raise ValueError("more pool layers than conv layers")
        for _, _, act in self.conv:
            _check_activation(act)
        for _, act in self.dense:
            _check_activation(act)
        if not self.dense:
            raise ValueError("the network needs at least one dense (output) layer")
        _chain_shapes(_compact_specs(self), self.input_shape)  # Raises on layers that shrink the image to nothing.

    def to_dict(self) -> dict:
        if self.layers:
            return {"input_shape": list(self.input_shape), "layers": [dataclasses.asdict(s) for s in self.layers]}
        d = dataclasses.asdict(self)
        del d["layers"]  # The compact form saves as it always did (checkpoints of formats 1-3 stay the same).
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The layers of a network jaxoip did not build (a researcher's NNX or PyTorch module): names in forward
    order, kinds ("conv", "dense", or "maps"/"units" by output rank) and output shapes, found by one probe;
    `aliases` are (alias, name) pairs of other names a layer answers to (PyTorch's `layer4_1_conv1`)."""

    layers: tuple[LayerSpec, ...]
    shapes: tuple[tuple[int, ...], ...]
    input_shape: tuple[int, int, int]
    # (other name, layer name): e.g. the study's names of a Keras file's layers.
    aliases: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")


def _compact_specs(config: ModelConfig) -> tuple[LayerSpec, ...]:
    specs = []
    for i, (filters, kernel, act) in enumerate(config.conv):
        specs.append(LayerSpec(f"Conv2D_{i + 1}", "conv", filters, kernel, act))
        if i < len(config.pool):
            specs.append(LayerSpec(f"Max_Pool_{i + 1}", "pool", config.pool[i]))
    specs.append(LayerSpec("Flatten", "flatten", 0))
    for i, (units, act) in enumerate(config.dense):
        specs.append(LayerSpec(f"Dense_{i + 1}", "dense", units, activation=act))
    return tuple(specs)


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding (before, after) of one axis: the output has ceil(size / stride) steps."""
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _window_out(size: int, window: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "same" else (size - window) // stride + 1


def _chain_shapes(specs: tuple[LayerSpec, ...], input_shape) -> list[tuple[int, ...]]:
    """Output shape of every layer (without batch axis); a ValueError naming the first layer that does not fit."""
    shape, shapes = tuple(input_shape), []
    for s in specs:
        spatial = len(shape) == 3
        if s.kind in ("conv", "pool", "gap") and not spatial or s.kind == "flatten" and not spatial:
            raise ValueError(f"layer {s.name!r} ({s.kind}) needs (H, W, C) maps, got shape {shape}")
        if s.kind in ("conv", "pool"):
            window = s.kernel if s.kind == "conv" else s.size
            h, w = (_window_out(n, window, s.stride, s.padding) for n in shape[:2])
            if h < 1 or w < 1:
                raise ValueError(f"layer {s.name!r} ({s.kind}) leaves no output from {shape[0]}x{shape[1]} maps")
            shape = (h, w, s.size if s.kind == "conv" else shape[2])
        elif s.kind == "gap":
            shape = (shape[2],)
        elif s.kind == "flatten":
            shape = (math.prod(shape),)
        elif s.kind == "dense":
            if spatial:
                raise ValueError(f"layer {s.name!r} (dense) needs a flatten or global pooling before it")
            shape = (s.size,)
        shapes.append(shape)
    if not specs or specs[-1].kind != "dense" and len(shape) != 1:
        raise ValueError("the network must end in a vector output (a dense layer or global pooling)")
    return shapes


def layer_specs(config: ModelConfig | NetworkSpec) -> tuple[LayerSpec, ...]:
    """The layers in forward order (the study's names for a compact config)."""
    check_model_config(config)
    return config.layers or _compact_specs(config)


def layer_names(config: ModelConfig) -> tuple[str, ...]:
    return tuple(s.name for s in layer_specs(config))


def layer_aliases(config: ModelConfig | NetworkSpec) -> dict[str, str]:
    """The study's names (`Conv2D_i`, `Max_Pool_i`, `Dense_i`) of an explicit chain's layers, where they name
    no layer of their own: the i-th convolution, a max pooling right after it, the i-th dense layer; a
    foreign network's own aliases (`NetworkSpec.aliases`)."""
    if isinstance(config, NetworkSpec):
        return dict(config.aliases)
    if not isinstance(config, ModelConfig) or not config.layers:
        return {}
    names, aliases, conv, dense = set(layer_names(config)), {}, 0, 0
    previous = None
    for s in config.layers:
        if s.kind == "conv":
            conv += 1
            alias = f"Conv2D_{conv}"
        elif s.kind == "pool" and s.pool == "max" and previous == "conv":
            alias = f"Max_Pool_{conv}"
        elif s.kind == "dense":
            dense += 1
            alias = f"Dense_{dense}"
        else:
            alias = None
        if alias and alias not in names:
            aliases[alias] = s.name
        previous = s.kind if s.kind not in ("activation", "dropout") else previous
    return aliases


def get_layer(config: ModelConfig, name: str, kinds: tuple[str, ...] | None = None) -> LayerSpec:
    """The spec of layer `name` (or of its study alias); a clear error listing valid names otherwise."""
    check_type("a layer name", name, str, error=LayerError)
    name = layer_aliases(config).get(name, name)
    specs = [s for s in layer_specs(config) if kinds is None or s.kind in kinds]
    for s in specs:
        if s.name == name:
            return s
    what = {None: "layer", MAP_KINDS: "map layer", SEARCH_KINDS: "map or vector layer"}.get(kinds)
    what = what or "/".join(kinds) + " layer"
    names = [s.name for s in specs]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if len(names) <= 12:
        hint = f"; nearest: {', '.join(near)}" if near else ""
        raise LayerError(f"unknown {what} {name!r}; valid names: {', '.join(names)}{hint}")
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise LayerError(f"unknown {what} {name!r}; {hint}{len(names)} valid names, from {names[0]} to {names[-1]}")


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch axis) of every layer, also under the study's aliases."""
    specs = layer_specs(config)
    if isinstance(config, NetworkSpec):
        shapes = dict(zip((s.name for s in specs), config.shapes))
    else:
        shapes = dict(zip((s.name for s in specs), _chain_shapes(specs, config.input_shape)))
    shapes.update({alias: shapes[name] for alias, name in layer_aliases(config).items()})
    return shapes


def activation_source(specs: tuple[LayerSpec, ...], index: int) -> int | None:
    """The layer whose activation `pre_activation` skips for layer `index`: itself, or the nearest layer below
    through pools and dropouts only (pooling the pre-activations); None if there is none."""
    i = index
    while i > 0 and specs[i].kind in ("pool", "dropout"):
        i -= 1
    return i if specs[i].has_activation else None


def activation_name(config: ModelConfig, layer_name: str) -> str:
    """The activation of a layer; for a pool layer, that of the conv below it ('linear' if none)."""
    specs = layer_specs(config)
    source = activation_source(specs, specs.index(get_layer(config, layer_name)))
    return "linear" if source is None else specs[source].activation


def receptive_field(config: ModelConfig, layer_name: str, i: int, j: int) -> tuple[int, int, int, int]:
    """Input rows [r0, r1) and columns [c0, c1) seen by node (i, j) of a map layer, clipped to the image."""
    target = get_layer(config, layer_name, MAP_KINDS)
    h, w, _ = layer_shapes(config)[target.name]
    if not (0 <= i < h and 0 <= j < w):
        raise LayerError(f"node ({i}, {j}) is outside the {h}x{w} maps of {target.name}")
    H, W, _ = config.input_shape
    if isinstance(config, NetworkSpec):  # The geometry of a foreign module's layers is unknown: the whole image.
        return 0, H, 0, W
    specs = layer_specs(config)
    shapes = [config.input_shape, *_chain_shapes(specs, config.input_shape)]
    # Walk backwards from the layer: output rows [r0, r1) of a window layer come from input rows
    # [r0 * stride - pad, (r1 - 1) * stride - pad + window).
    r0, r1, c0, c1 = i, i + 1, j, j + 1
    index = specs.index(target)
    for k in range(index, -1, -1):
        s = specs[k]
        if s.kind in ("conv", "pool"):
            window = s.kernel if s.kind == "conv" else s.size
            below = shapes[k]
            pad_r = _same_padding(below[0], window, s.stride)[0] if s.padding == "same" else 0
            pad_c = _same_padding(below[1], window, s.stride)[0] if s.padding == "same" else 0
            r0, r1 = r0 * s.stride - pad_r, (r1 - 1) * s.stride - pad_r + window
            c0, c1 = c0 * s.stride - pad_c, (c1 - 1) * s.stride - pad_c + window
    return max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)


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
        pads += [_same_padding(x.shape[-3], kh, stride), _same_padding(x.shape[-2], kw, stride), (0, 0)]
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
        pads[1], pads[2] = _same_padding(x.shape[1], size, stride), _same_padding(x.shape[2], size, stride)
    if spec.pool == "max":
        out = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
        nan = jax.lax.reduce_window(jnp.isnan(x).astype(x.dtype), 0.0, jax.lax.max, window, strides, pads)
        return jnp.where(nan > 0, jnp.nan, out)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    count = jax.lax.reduce_window(jnp.ones_like(x[:1, ..., :1]), 0.0, jax.lax.add, window, strides, pads)
    return total / count


class Network(nnx.Module):
    """What every analysis takes: a module whose `config` names its layers in forward order (`layer_specs`,
    `layer_shapes`) and whose call returns any layer's output, `model(images, until=name, pre_activation)`.

    `CNN` (the built-in chain), `jaxoip.models.adapter.NNXNetwork` (a researcher's own NNX module) and
    `jaxoip.models.torch_net.TorchNetwork` (a PyTorch module through torchax) are the three.
    """

    config: ModelConfig


class CNN(Network):
    """The built-in CNN. Keras-like initialization (Glorot-uniform kernels, zero biases)."""

    def __init__(self, config: ModelConfig = ModelConfig(), *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.glorot_uniform()
        channels = config.input_shape[-1]
        for s, shape in zip(layer_specs(config), _chain_shapes(layer_specs(config), config.input_shape)):
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

    def __call__(self, images, until: str | None = None, pre_activation: bool = False):
        """Output of layer `until` (default: the last) for a batch of standardized images (B, H, W, C).

        `pre_activation` returns the layer's value before its activation (logits for the last layer; for
        a pooling, the pooled pre-activations of the convolution below).
        """
        specs = layer_specs(self.config)
        target = specs.index(get_layer(self.config, until)) if until else len(specs) - 1
        skip = activation_source(specs, target) if pre_activation else None
        x = images
        for i, s in enumerate(specs[: target + 1]):
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
            # Dropout is inert at inference.
            if s.has_activation and i != skip:
                x = _ACTIVATIONS[s.activation](x)
        return x


_MODULE_ATTRIBUTES = frozenset(dir(CNN)) | {"config"}


def map_activation(model: Network, images, layer_name: str, map_indices, pre_activation: bool = False) -> jax.Array:
    """Map `map_indices[i]` of map layer `layer_name` for image i: (N, H, W).

    For a convolution (and poolings right after it) of the built-in CNN, only the selected channel of
    the convolution is computed (a per-image kernel), so the last convolution costs 1/C of the full
    layer; equal to `model(images, until=layer_name)[i, ..., m]`, which is what other layers use.
    `pre_activation` skips the convolution's activation (pooling still follows).
    """
    specs = layer_specs(model.config)
    t = specs.index(get_layer(model.config, layer_name, MAP_KINDS))
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
    model: Network,
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
    layer_name = get_layer(check_cnn(model).config, layer_name).name
    numerics.check_precision(precision)
    check_finite_weights(model, layer_name)
    graphdef, params = nnx.split(model)
    images = check_finite_images("the images", images).astype(np.float32)
    batch_size = max(1, min(batch_size, images.shape[0]))
    xs, n = pad_batches(images, batch_size)
    out = _layer_map(params, xs, graphdef=graphdef, layer_name=layer_name, fn=fn or identity, precision=precision)
    numerics.wait_ready(out)  # A Ctrl-C lands while it runs.
    out = jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out))
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


def check_model_config(config):
    """A `ModelConfig` (or the `NetworkSpec` of a researcher's own module)."""
    return check_type("the model config", config, (ModelConfig, NetworkSpec))


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
