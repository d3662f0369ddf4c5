"""The layers of a network as plain data: `LayerSpec`, `ModelConfig`, `NetworkSpec`, layer names and shapes.

Plain Python (no JAX): a command checks a layer name, map indices or a node against a checkpoint's
`metadata.json` before it imports JAX or loads the model. `jaxoip.models.cnn` builds the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Literal

from jaxoip._check import check_type
from jaxoip.errors import LayerError

LayerKind = Literal["conv", "pool", "gap", "batchnorm", "activation", "dropout", "flatten", "dense", "maps", "units"]
# Layers whose output is a stack of (H, W) maps: what exemplars, grids and map searches take.
MAP_KINDS = ("conv", "pool", "batchnorm", "activation", "dropout", "maps")
# Layers with one value per unit (a vector per image).
VECTOR_KINDS = ("gap", "dense", "units")
# Layers an OIP search can target: the map layers and the vector layers.
SEARCH_KINDS = (*MAP_KINDS, *VECTOR_KINDS)
KINDS = ("conv", "pool", "gap", "batchnorm", "activation", "dropout", "flatten", "dense", "maps", "units")
# The activations a layer may name (`jaxoip.models.cnn` holds their functions).
ACTIVATIONS = ("relu", "linear", "sigmoid", "tanh", "softmax")


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
        if self.kind not in KINDS:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; choose from {', '.join(KINDS)}")
        check_activation(self.activation)
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
            chain_shapes(layers, self.input_shape)  # Raises on a chain that does not fit together.
            return
        object.__setattr__(self, "conv", tuple(tuple(c) for c in self.conv))
        object.__setattr__(self, "pool", tuple(self.pool))
        object.__setattr__(self, "dense", tuple(tuple(d) for d in self.dense))
        if len(self.pool) > len(self.conv):
            raise ValueError("more pool layers than conv layers")
        for _, _, act in self.conv:
            check_activation(act)
        for _, act in self.dense:
            check_activation(act)
        if not self.dense:
            raise ValueError("the network needs at least one dense (output) layer")
        chain_shapes(compact_specs(self), self.input_shape)  # Raises on layers that shrink the image to nothing.

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
    """The layers of a network jaxoip did not build (a researcher's NNX, Keras or PyTorch model): names in
    forward order, kinds ("conv", "dense", or "maps"/"units" by output rank) and output shapes, found by one
    probe; `aliases` are (alias, name) pairs of other names a layer answers to (the study's `Conv2D_i` for a
    Keras file, PyTorch's `layer4_1_conv1`)."""

    layers: tuple[LayerSpec, ...]
    shapes: tuple[tuple[int, ...], ...]
    input_shape: tuple[int, int, int]
    aliases: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_activation(name: str):
    """A ValueError unless `name` is one of `ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")


def compact_specs(config: ModelConfig) -> tuple[LayerSpec, ...]:
    """The layer specs of a config given in the compact form (`conv`, `pool`, `dense`)."""
    specs = []
    for i, (filters, kernel, act) in enumerate(config.conv):
        specs.append(LayerSpec(f"Conv2D_{i + 1}", "conv", filters, kernel, act))
        if i < len(config.pool):
            specs.append(LayerSpec(f"Max_Pool_{i + 1}", "pool", config.pool[i]))
    specs.append(LayerSpec("Flatten", "flatten", 0))
    for i, (units, act) in enumerate(config.dense):
        specs.append(LayerSpec(f"Dense_{i + 1}", "dense", units, activation=act))
    return tuple(specs)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding (before, after) of one axis: the output has ceil(size / stride) steps."""
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def window_out(size: int, window: int, stride: int, padding: str) -> int:
    """The number of steps of a window along one axis ("same" or "valid" padding)."""
    return -(-size // stride) if padding == "same" else (size - window) // stride + 1


def chain_shapes(specs: tuple[LayerSpec, ...], input_shape) -> list[tuple[int, ...]]:
    """Output shape of every layer (without batch axis); a ValueError naming the first layer that does not fit."""
    shape, shapes = tuple(input_shape), []
    for s in specs:
        spatial = len(shape) == 3
        if s.kind in ("conv", "pool", "gap") and not spatial or s.kind == "flatten" and not spatial:
            raise ValueError(f"layer {s.name!r} ({s.kind}) needs (H, W, C) maps, got shape {shape}")
        if s.kind in ("conv", "pool"):
            window = s.kernel if s.kind == "conv" else s.size
            h, w = (window_out(n, window, s.stride, s.padding) for n in shape[:2])
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
    return config.layers or compact_specs(config)


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
        shapes = dict(zip((s.name for s in specs), chain_shapes(specs, config.input_shape)))
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
    shapes = [config.input_shape, *chain_shapes(specs, config.input_shape)]
    # Walk backwards from the layer: output rows [r0, r1) of a window layer come from input rows
    # [r0 * stride - pad, (r1 - 1) * stride - pad + window).
    r0, r1, c0, c1 = i, i + 1, j, j + 1
    index = specs.index(target)
    for k in range(index, -1, -1):
        s = specs[k]
        if s.kind in ("conv", "pool"):
            window = s.kernel if s.kind == "conv" else s.size
            below = shapes[k]
            pad_r = same_padding(below[0], window, s.stride)[0] if s.padding == "same" else 0
            pad_c = same_padding(below[1], window, s.stride)[0] if s.padding == "same" else 0
            r0, r1 = r0 * s.stride - pad_r, (r1 - 1) * s.stride - pad_r + window
            c0, c1 = c0 * s.stride - pad_c, (c1 - 1) * s.stride - pad_c + window
    return max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)


def check_model_config(config):
    """A `ModelConfig` (or the `NetworkSpec` of a researcher's own module)."""
    return check_type("the model config", config, (ModelConfig, NetworkSpec))
