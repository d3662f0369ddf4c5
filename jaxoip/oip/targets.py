"""OIP targets beyond one conv or pool map: dense nodes, class logits and probabilities, weighted sums.

A target is a weighted sum of units of one layer. A unit is a map of a conv or pool layer (its mean,
or its node (i, j)) or a node of a dense layer (a class of the last layer). The value of a unit is
its activation, or with `quantity="pre"` its value before the activation; `quantity="auto"` (the
default) takes the pre-activation of a softmax layer (the class logits, as Lucid recommends: a
probability can also rise by lowering the other classes) and the activation of every other layer.

Weighted sums are written as text (`parse_terms`): terms separated by `+`, `-` or `,`, each an
index with an optional `weight*` in front:

    4        the unit 4
    4-9      unit 4 minus unit 9 (on Dense_2: "4 rather than 9")
    4,-1*9   the same
    0.5*3+0.5*8

In the batched search (an objective's `weighted` sums), image i then drives the weighted sum number `maps[i]`.

The selective objective (`ObjectiveConfig.selective` = lambda > 0, `make_selective_objectives`) ascends the
target's normalized value minus lambda times the mean normalized value of the layer's other units,
a unit's value normalized by its largest value over the test images (`data_max`). It computes the
whole layer at every step. A unit whose largest value on data is not positive (dead on data) has no
scale: as the target it is normalized by 1, and it is left out of the other units' mean.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Int

from jaxoip._check import check_type
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import _ACTIVATIONS, PASS_BATCH, image_batches, map_activation
from jaxoip.models.network import Layer
from jaxoip.numerics import precision_scope
from jaxoip.oip.config import Terms, check_terms
from jaxoip.oip.objectives import Objective
from jaxoip.passes import run_pass


def parse_terms(text: str) -> Terms:
    """'4-9' -> ((4, 1.0), (9, -1.0)); see the module docstring for the syntax. Repeated units add up."""
    check_type("a target", text, str)
    pieces = []
    for chunk in str(text).replace(" ", "").split(","):
        pieces += [p for p in re.split(r"(?<=\d)(?=[+-])", chunk) if p]
    if not pieces:
        raise JaxoipError(f"empty target {text!r}")
    weights: dict[int, float] = {}
    for p in pieces:
        m = re.fullmatch(r"([+-]?)(?:(\d*\.?\d+(?:[eE][+-]?\d+)?)\*)?(\d+)", p)
        if m is None:
            raise JaxoipError(f"cannot read target term {p!r} in {text!r}; write e.g. 4-9, 4,-1*9 or 0.5*3+0.5*8")
        w = (-1.0 if m.group(1) == "-" else 1.0) * float(m.group(2) or 1.0)
        if not math.isfinite(w):
            raise JaxoipError(f"the weight of target term {p!r} in {text!r} is not a finite number")
        weights[int(m.group(3))] = weights.get(int(m.group(3)), 0.0) + w
    return check_terms(tuple(sorted(weights.items())), f"target {text!r}")


@dataclasses.dataclass(frozen=True)
class Target:
    """A weighted sum of units of `layer` (each unit's map mean, or its node)."""

    layer: str
    terms: Terms
    node: tuple[int, int] | None = None

    @classmethod
    def parse(cls, layer: str, text: str, node: tuple[int, int] | None = None) -> Target:
        return cls(layer, parse_terms(text), None if node is None else tuple(node))

    @property
    def label(self) -> str:
        parts = []
        for i, (u, w) in enumerate(self.terms):
            sign = "-" if w < 0 else ("+" if i else "")
            parts.append(f"{sign}{'' if abs(w) == 1 else f'{abs(w):g}*'}{u}")
        return "".join(parts)

    @property
    def single(self) -> int | None:
        """The unit if this target is one unit with weight 1."""
        return self.terms[0][0] if len(self.terms) == 1 and self.terms[0][1] == 1.0 else None


def search_arguments(
    targets: Iterable[Target],
) -> tuple[str, Int[np.ndarray, " m"], tuple[int, int] | None, tuple[Terms, ...]]:
    """(layer, maps, node, weighted) for `search_oips` (or `scan_maps`) from targets of one layer and node.

    Plain units search their indices (weighted is empty); otherwise `weighted` holds the sums and image i
    searches sum i.
    """
    if isinstance(targets, Target) or not isinstance(targets, Iterable):
        raise JaxoipError(f"targets must be a list of Target, got {type(targets).__name__}")
    targets = list(targets)
    if not targets:
        raise JaxoipError("no target given")
    for t in targets:
        check_type("a target", t, Target, " (Target.parse(layer, '4-9'))")
    if len({(t.layer, t.node) for t in targets}) > 1:
        raise JaxoipError("all targets of one search must share their layer and node")
    if all(t.single is not None for t in targets):
        return targets[0].layer, np.array([t.single for t in targets], np.int32), targets[0].node, ()
    return targets[0].layer, np.arange(len(targets), dtype=np.int32), targets[0].node, tuple(t.terms for t in targets)


def unit_values(model, x, layer: Layer, node, pre: bool) -> jax.Array:
    """(N, C): per unit, the map mean (or node) of a map layer, or the dense node; `pre`: before the
    activation (for a pool layer: the pooled pre-activation of the conv below, as pooling commutes with it)."""
    v = model(x, until=layer, pre_activation=pre)
    if v.ndim == 4:
        v = v[:, node[0], node[1]] if node is not None else v.mean(axis=(1, 2))
    return v


def weight_matrix(weighted: tuple[Terms, ...], n_units: int) -> np.ndarray:
    w = np.zeros((len(weighted), n_units), np.float32)
    for k, terms in enumerate(weighted):
        for u, wt in terms:
            w[k, u] += wt
    return w


def plain_objectives(graphdef: nnx.GraphDef, objective: Objective):
    """Pure (params, images (N,H,W,1), maps (N,)) -> objectives (N,): map `maps[i]` of image i (its mean or
    node), by the network's per-map path (`map_activation`)."""
    node = objective.node

    def fn(params, x, maps):
        fmap = map_activation(nnx.merge(graphdef, params), x, objective.layer, maps)  # (N, H, W)
        return fmap[:, node[0], node[1]] if node is not None else fmap.mean(axis=(1, 2))

    return fn


def make_target_objectives(graphdef: nnx.GraphDef, objective: Objective):
    """Pure (params, x (N,H,W,1), maps (N,)) -> (objective (N,), wake objective (N,), asleep (N,) bool).

    The objective is the target's value; with wake-up on a ReLU layer, an image is `asleep` when
    the positive-weight part of its target is zero, and the wake objective (ascended instead) is the
    target's pre-activation: the map's largest node (or its node), the dense node, the weighted sum.
    """
    layer, node, quantity, wake = objective.layer, objective.node, objective.quantity, objective.wakes
    act = _ACTIVATIONS[layer.activation]

    def fn(params, x, maps):
        model = nnx.merge(graphdef, params)
        if objective.weighted:
            w = jnp.asarray(weight_matrix(objective.weighted, layer.channels))[maps]  # (N, C)
            if quantity == "pre":
                obj = (w * unit_values(model, x, layer, node, True)).sum(axis=1)
                return obj, obj, jnp.zeros(obj.shape, bool)
            post_v = unit_values(model, x, layer, node, False)
            obj = (w * post_v).sum(axis=1)
            if not wake:
                return obj, obj, jnp.zeros(obj.shape, bool)
            asleep = (jnp.maximum(w, 0) * post_v).sum(axis=1) <= 0
            return obj, (w * unit_values(model, x, layer, node, True)).sum(axis=1), asleep
        if layer.is_vector:
            pre_all = model(x, until=layer, pre_activation=True)
            pre = jnp.take_along_axis(pre_all, maps[:, None], axis=1)[:, 0]
            if quantity == "pre":
                return pre, pre, jnp.zeros(pre.shape, bool)
            post = jnp.take_along_axis(act(pre_all), maps[:, None], axis=1)[:, 0]
            return post, pre, (post <= 0) if wake else jnp.zeros(post.shape, bool)
        pre_map = map_activation(model, x, layer, maps, pre_activation=True)  # (N, H, W)
        fmap = pre_map if quantity == "pre" else act(pre_map)
        obj = fmap[:, node[0], node[1]] if node is not None else fmap.mean(axis=(1, 2))
        if not wake:
            return obj, obj, jnp.zeros(obj.shape, bool)
        wake_obj = pre_map[:, node[0], node[1]] if node is not None else pre_map.max(axis=(1, 2))
        return obj, wake_obj, obj <= 0

    return fn


def selective_value(values, maps, data_max, lam: float):
    """(N,): normalized target value minus `lam` times the mean normalized value of the other units,
    from every unit's values (N, C), the targets (N,) and the units' largest values on data (C,)."""
    live = data_max[None, :] > 0
    normalized = values / jnp.where(live, data_max[None, :], 1.0)
    target = jnp.take_along_axis(normalized, maps[:, None], axis=1)[:, 0]
    others = live & (jnp.arange(values.shape[1])[None, :] != maps[:, None])
    mean_others = jnp.where(others, normalized, 0.0).sum(axis=1) / jnp.maximum(others.sum(axis=1), 1)
    return target - lam * mean_others


def make_selective_objectives(graphdef: nnx.GraphDef, objective: Objective):
    """Pure (params, x (N,H,W,1), maps (N,), data_max (C,)) -> (objective, selective objective, wake
    objective, asleep), each (N,); the objective is the target's value, as without selectivity."""
    layer, node, wake = objective.layer, objective.node, objective.wakes

    def fn(params, x, maps, data_max):
        model = nnx.merge(graphdef, params)
        # One pass over the whole layer: with wake-up the pre-activation, the ReLU of it (for a pool
        # layer too, as ReLU commutes with max pooling) the activation.
        full = model(x, until=layer, pre_activation=objective.quantity == "pre" or wake)
        pre_full, full = full, (jax.nn.relu(full) if wake else full)
        if full.ndim == 4:
            values = full[:, node[0], node[1]] if node is not None else full.mean(axis=(1, 2))
        else:
            values = full
        obj = jnp.take_along_axis(values, maps[:, None], axis=1)[:, 0]
        selective = selective_value(values, maps, data_max, objective.selective)
        if not wake:
            return obj, selective, obj, jnp.zeros(obj.shape, bool)
        pre = jnp.take_along_axis(pre_full, maps.reshape(-1, *(1,) * (pre_full.ndim - 1)), axis=-1)[..., 0]
        if pre.ndim == 3:
            wake_obj = pre[:, node[0], node[1]] if node is not None else pre.max(axis=(1, 2))
        else:
            wake_obj = pre
        return obj, selective, wake_obj, obj <= 0

    return fn


@functools.partial(jax.jit, static_argnames=("graphdef", "objective", "precision"))
def _target_values(params, x, *, graphdef, objective, precision):
    """(params, one batch of images (B, ...)) -> every target's value (B, K) (`jaxoip.passes.run_pass` runs it
    batch by batch)."""
    with precision_scope(precision):
        v = unit_values(nnx.merge(graphdef, params), x, objective.layer, objective.node, objective.quantity == "pre")
        if objective.weighted:
            v = v @ jnp.asarray(weight_matrix(objective.weighted, v.shape[-1])).T
        return v


def batched_target_values(
    model, images, objective: Objective, precision, batch_size: int = PASS_BATCH, pad: bool = False, cache: bool = False
) -> np.ndarray:
    """Every target's value (N, K) for standardized images: K units, or K weighted sums. Forward only;
    `pad`: batches of `batch_size` however few the images (`jaxoip.models.cnn.image_batches`); `cache`: see
    `jaxoip.passes.run_pass`."""
    graphdef, params = nnx.split(model)
    images = np.asarray(images, np.float32)
    xs, n = image_batches(images, batch_size, pad)
    static = {"graphdef": graphdef, "objective": objective, "precision": precision}
    return run_pass(_target_values, params, xs, static, cache)[:n]
