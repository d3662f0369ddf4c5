"""What a search ascends, as a value: `Objective`, built once from a resolved `Layer` and composed like Lucent's.

A batched search drives many targets at once: image i ascends target `maps[i]` of one objective. An
`Objective` is that family of targets on one layer:

    obj = objective(layer)                      # every map's mean (or node, or dense unit): target m is unit m
    obj = channel(layer, 4) - channel(layer, 9) # one target: unit 4 rather than unit 9 ("4-9")
    obj = 0.5 * channel(layer, 3) + 0.5 * channel(layer, 8)
    -obj                                        # the minimizing search: every weight negated

A unit's value is its activation, or with `quantity="pre"` its value before the activation (resolved from
"auto": the class logits of a softmax layer). `wake` (a ReLU target's only) ascends the pre-activation while
the target is zero; `selective` > 0 ascends the target against the layer's other units (normalized by their
largest values on data). The objective is frozen and hashable: it is a static argument of the compiled search.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
from jaxtyping import Int

from jaxoip._check import check_type
from jaxoip.errors import JaxoipError, LayerError
from jaxoip.models.network import Layer
from jaxoip.oip.config import (
    QUANTITIES,
    SELECTIVE_WEIGHTED,
    ObjectiveConfig,
    Terms,
    check_indices,
    check_units,
    check_weighted,
)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A family of targets on one layer. `weighted` empty: target m is unit m (a map's mean or node, a dense
    unit); else target k is the weighted sum `weighted[k]` of units. `quantity`, `wake` are resolved values."""

    layer: Layer
    node: tuple[int, int] | None = None
    quantity: str = "activation"
    weighted: tuple[Terms, ...] = ()
    wake: bool = False  # Asked for; it acts only where a target can be asleep (`wakes`).
    selective: float = 0.0

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise JaxoipError(f"an objective needs a resolved layer (network.layer(name)), got {self.layer!r}")
        if not (self.layer.is_maps or self.layer.is_vector):
            raise LayerError(f"layer {self.layer.name} ({self.layer.kind}) has no maps or units to search")
        object.__setattr__(self, "node", self.layer.check_node(self.node))
        if self.quantity not in ("activation", "pre"):
            raise JaxoipError(f"an objective's quantity is 'activation' or 'pre', got {self.quantity!r}")
        weighted = check_weighted(self.weighted)
        object.__setattr__(self, "weighted", weighted)
        check_units(weighted, self.layer.name, self.layer.channels, self.layer.is_vector)
        if self.selective and weighted:
            raise JaxoipError(SELECTIVE_WEIGHTED)

    # --- What the search and the measures need to know -----------------------------------------------------

    @property
    def n_targets(self) -> int:
        """How many targets the family holds (the valid values of `maps[i]`)."""
        return len(self.weighted) or self.layer.channels

    @property
    def can_wake(self) -> bool:
        """Whether a target can be asleep: the activation of a ReLU layer."""
        return self.layer.activation == "relu" and self.quantity == "activation"

    @property
    def wakes(self) -> bool:
        """Whether the wake-up acts: asked for, on a ReLU activation."""
        return self.wake and self.can_wake

    @property
    def custom(self) -> bool:
        """Whether the target needs the general unit values (a vector layer, weighted sums, a pre-activation)
        rather than the fast per-map path."""
        return self.layer.is_vector or bool(self.weighted) or self.quantity == "pre"

    @property
    def can_be_dead(self) -> bool:
        """Whether a unit whose largest value on the data is <= 0 is dead: a ReLU's value (or a module's own
        layer, whose activation is unknown). Logits, weighted sums and pre-activations are not."""
        if self.weighted or self.quantity == "pre":
            return False
        return self.layer.kind in ("maps", "units") or self.layer.activation == "relu"

    @property
    def per_map(self) -> bool:
        """Whether target m is map m of a map layer (no node, no weighted sums): what exemplars are found for."""
        return self.layer.is_maps and self.node is None and not self.weighted

    def check_targets(self, maps) -> Int[np.ndarray, " m"]:
        """`maps` (target indices) as int32, each in range; one line otherwise (`config.check_indices`)."""
        return check_indices(maps, self.layer.name, self.layer.channels, self.layer.is_vector, len(self.weighted))

    # --- Composition ---------------------------------------------------------------------------------------

    def family(self) -> tuple[Terms, ...]:
        """Every target as weighted terms (target m of a plain objective is ((m, 1.0),))."""
        return self.weighted or tuple(((u, 1.0),) for u in range(self.layer.channels))

    def _with_family(self, family) -> Objective:
        return dataclasses.replace(self, weighted=tuple(family), wake=False, selective=0.0)

    def __neg__(self) -> Objective:
        """The minimizing objective: every target's weights negated (no wake-up, no selectivity)."""
        return self._with_family(tuple((u, -w) for u, w in terms) for terms in self.family())

    def __mul__(self, k) -> Objective:
        if not isinstance(k, numbers.Real) or isinstance(k, bool):
            return NotImplemented
        return self._with_family(tuple((u, float(k) * w) for u, w in terms) for terms in self.family())

    __rmul__ = __mul__

    def __add__(self, other) -> Objective:
        """Target-wise sum of two objectives on the same layer, node and quantity; a one-target objective is
        added to every target of the other."""
        if not isinstance(other, Objective):
            return NotImplemented
        if (self.layer, self.node, self.quantity) != (other.layer, other.node, other.quantity):
            raise JaxoipError("objectives add up only on the same layer, node and quantity")
        a, b = self.family(), other.family()
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            raise JaxoipError(f"objectives of {len(a)} and {len(b)} targets do not add up")
        n = max(len(a), len(b))
        return self._with_family(tuple(_sum_terms(a[k % len(a)], b[k % len(b)]) for k in range(n)))

    def __sub__(self, other) -> Objective:
        return self + (-other) if isinstance(other, Objective) else NotImplemented

    def select(self, maps) -> Objective:
        """The targets `maps` of this family, renumbered 0..len(maps)-1."""
        family = self.family()
        return self._with_family(family[int(m)] for m in self.check_targets(maps))

    def pre(self) -> Objective:
        """The same targets on the units' pre-activations (no wake-up: a pre-activation is never asleep)."""
        return dataclasses.replace(self, quantity="pre", wake=False)

    def minimizing(self, maps) -> tuple[Objective, Int[np.ndarray, " m"]]:
        """(objective, target indices) of the minimizing search of targets `maps`: each target's negated
        pre-activation (a negated ReLU has no gradient once the unit is off), one target per map."""
        maps = self.check_targets(maps)
        return (-self.pre()).select(maps), np.arange(len(maps), dtype=np.int32)


def _sum_terms(a: Terms, b: Terms) -> Terms:
    out: dict[int, float] = {}
    for u, w in (*a, *b):
        out[u] = out.get(u, 0.0) + w
    return tuple(sorted(out.items()))


def resolve_quantity(layer: Layer, quantity: str) -> str:
    """'activation' or 'pre' for `quantity` on this layer ('auto': the logits of a softmax layer)."""
    if quantity not in QUANTITIES:
        raise JaxoipError(f"unknown quantity {quantity!r}; choose from {', '.join(QUANTITIES)}")
    if quantity != "auto":
        return quantity
    return "pre" if layer.activation == "softmax" else "activation"


def objective(
    layer: Layer,
    node: tuple[int, int] | None = None,
    quantity: str = "auto",
    weighted: tuple[Terms, ...] = (),
    wake: bool = True,
    selective: float = 0.0,
) -> Objective:
    """Every unit of `layer` (or the weighted sums `weighted`), the study's target family: see the module."""
    return Objective(
        layer, node, resolve_quantity(layer, quantity), check_weighted(weighted), bool(wake), float(selective)
    )


def channel(layer: Layer, unit: int, node: tuple[int, int] | None = None, quantity: str = "auto") -> Objective:
    """One target: unit `unit` of `layer` (a map's mean, or its node; a dense unit), as a one-target family."""
    return Objective(layer, node, resolve_quantity(layer, quantity), (((int(unit), 1.0),),))


def resolve_objective(
    network,
    target: str | Layer | Objective,
    node=None,
    options: ObjectiveConfig | None = None,
    weighted: tuple[Terms, ...] = (),
    default: ObjectiveConfig = ObjectiveConfig(),
) -> Objective:
    """The objective a public call names: an `Objective` as it is (a layer of `network`; its node, weighted sums
    and options are its own, so none may be given beside it), or the units of the layer `target` (name or
    `Layer`) as `options` (None: `default`) and `weighted` describe."""
    if isinstance(target, Objective):
        if node is not None or weighted or options is not None:
            raise JaxoipError("an Objective holds its node, weighted sums and options: give them to it, not here")
        network.layer(target.layer)  # One of this network's layers.
        return target
    check_type("a target", target, (str, Layer), " (a layer name, a Layer or an Objective)", error=LayerError)
    if options is not None:
        check_type("options", options, ObjectiveConfig)
    return from_config(network.layer(target), node, default if options is None else options, weighted)


def from_config(
    layer: Layer, node=None, options: ObjectiveConfig = ObjectiveConfig(), weighted: tuple[Terms, ...] = ()
) -> Objective:
    """The objective of `layer`'s units (or of the `weighted` sums) that `options` describes (the commands'
    --quantity, --wake and --selective)."""
    return objective(layer, node, options.quantity, check_weighted(weighted), options.wake, options.selective)
