"""The `Network` protocol every analysis takes, and `Layer`, a layer resolved once.

A network is an NNX module with a `config` (the layers as plain data: a `ModelConfig` for the built-in CNN,
a `NetworkSpec` for a researcher's NNX, Keras or PyTorch model) and a call `network(images, until=layer,
pre_activation=False)` that returns one layer's output. Everything else is derived here, the same way for
every kind of network:

    layer = network.layer("Conv2D_3")        # resolved once: name, kind, shape, receptive field
    acts = network.activations(x, [layer, "Dense_2"])   # several layers of one forward pass

`Layer` is a frozen value (hashable, so it can be a static argument of a compiled function). Code that holds
one never looks the name up again, and no code outside `jaxoip.models` asks which kind of network it has.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

from flax import nnx

from jaxoip.errors import LayerError
from jaxoip.models.spec import (
    MAP_KINDS,
    SEARCH_KINDS,
    VECTOR_KINDS,
    LayerSpec,
    ModelConfig,
    NetworkSpec,
    activation_source,
    get_layer,
    layer_aliases,
    layer_shapes,
    layer_specs,
    receptive_field,
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a network, resolved once from its name or alias (`Network.layer`).

    `kind` is the spec's ("conv", "pool", "dense", ... or "maps"/"units" for a foreign module's layer);
    `shape` the output shape of one image (H, W, C) or (N,); `activation` the activation that a
    pre-activation view skips ("linear" when none; for a pooling, the convolution's below it).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    index: int
    activation: str
    aliases: tuple[str, ...] = ()
    spec: LayerSpec | None = dataclasses.field(default=None, compare=False, repr=False)
    config: ModelConfig | NetworkSpec | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def channels(self) -> int:
        """Maps of a map layer, units of a vector layer."""
        return self.shape[-1]

    @property
    def is_maps(self) -> bool:
        """Whether the output is a stack of (H, W) maps (what exemplars, grids and map searches take)."""
        return self.kind in MAP_KINDS

    @property
    def is_vector(self) -> bool:
        return self.kind in VECTOR_KINDS

    @property
    def has_geometry(self) -> bool:
        """Whether the receptive fields of this layer's nodes are known (the built-in chain's layers)."""
        return isinstance(self.config, ModelConfig) and self.is_maps

    def receptive_field(self, i: int, j: int) -> tuple[int, int, int, int] | None:
        """Input rows [r0, r1) and columns [c0, c1) that node (i, j) sees; None where the geometry is
        unknown (a foreign module's layer)."""
        if not self.is_maps:
            raise LayerError(f"layer {self.name} has no maps, so no nodes (i, j)")
        if not self.has_geometry:
            return None
        return receptive_field(self.config, self.name, i, j)

    def check_node(self, node: tuple[int, int] | None) -> tuple[int, int] | None:
        """`node` as a pair inside this layer's maps (None stays None); one line otherwise."""
        if node is None:
            return None
        if not self.is_maps:
            what = "vector" if self.is_vector else self.kind
            raise LayerError(f"--node applies to maps, not to the {what} layer {self.name}")
        try:
            i, j = (int(v) for v in node)
        except (TypeError, ValueError):
            raise LayerError(f"a node is (i, j), got {node!r}") from None
        h, w = self.shape[:2]
        if not (0 <= i < h and 0 <= j < w):
            raise LayerError(f"node ({i}, {j}) is outside the {h}x{w} maps of {self.name}")
        return i, j


@functools.lru_cache(maxsize=64)
def resolve_layers(config: ModelConfig | NetworkSpec) -> tuple[Layer, ...]:
    """Every layer of `config` as a `Layer`, in forward order (cached: configs are frozen values)."""
    specs = layer_specs(config)
    shapes = layer_shapes(config)
    aliases: dict[str, list[str]] = {}
    for alias, name in layer_aliases(config).items():
        aliases.setdefault(name, []).append(alias)
    layers = []
    for index, s in enumerate(specs):
        source = activation_source(specs, index)
        layers.append(
            Layer(
                name=s.name,
                kind=s.kind,
                shape=tuple(shapes[s.name]),
                index=index,
                activation="linear" if source is None else specs[source].activation,
                aliases=tuple(aliases.get(s.name, ())),
                spec=s,
                config=config,
            )
        )
    return tuple(layers)


def find_layer(config: ModelConfig | NetworkSpec, layer: str | Layer, kinds: tuple[str, ...] | None = None) -> Layer:
    """The `Layer` of `config` that `layer` names (a name, an alias, or a `Layer` of this network); one line
    naming valid and near names otherwise. `kinds` restricts the layers (e.g. `MAP_KINDS`)."""
    if isinstance(layer, Layer):
        if layer.config is config or layer.config == config:
            if kinds is None or layer.kind in kinds:
                return layer
        elif layer.config is not None:
            raise LayerError(f"layer {layer.name} belongs to another network")
        name = layer.name
    else:
        name = layer
    spec = get_layer(config, name, kinds)  # One line with near names for an unknown or wrong-kind layer.
    return resolve_layers(config)[layer_specs(config).index(spec)]


class Network(nnx.Module):
    """What every analysis takes: a module whose `config` names its layers in forward order and whose call
    returns any layer's output, `network(images, until=layer, pre_activation=False)`.

    `CNN` (the built-in chain), `jaxoip.models.adapter.NNXNetwork` (a researcher's NNX module),
    `jaxoip.models.keras_net.KerasNetwork` and `jaxoip.models.torch_net.TorchNetwork` implement it.
    """

    config: ModelConfig | NetworkSpec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image as the network takes it."""
        return tuple(self.config.input_shape)

    @property
    def rebuildable(self) -> bool:
        """Whether `init_model(network.config, key)` builds this architecture anew (fresh weights) and each
        conv layer's kernel is `network.<layer>.kernel`: what training and the seed comparison (its
        untrained copies, its kernel comparison) need. The built-in CNN is; a module of your own is not."""
        return False

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every layer, in forward order."""
        return resolve_layers(self.config)

    def layer(self, name: str | Layer, kinds: tuple[str, ...] | None = SEARCH_KINDS) -> Layer:
        """The layer `name` names (or its alias), resolved once; `kinds`: the kinds allowed (default: the
        layers a search can target; None for any)."""
        return find_layer(self.config, name, kinds)

    def activations(self, images, layers: Iterable[str | Layer], pre_activation: bool = False) -> dict[str, object]:
        """{layer name: output} of several layers for one batch of standardized images. Under `jax.jit` the
        network's common prefix is computed once (XLA merges the identical computations)."""
        resolved: Sequence[Layer] = [self.layer(layer, None) for layer in layers]
        return {layer.name: self(images, until=layer, pre_activation=pre_activation) for layer in resolved}


def layer_name(layer: str | Layer | None) -> str | None:
    """The name of a layer given by name or handle (for a network's `until`)."""
    return layer.name if isinstance(layer, Layer) else layer
