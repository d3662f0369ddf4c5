"""The OIP search's settings: `OIPConfig`, validated on construction, and the values it accepts.

The search itself is `jaxoip.oip.search`; the toolkit fields are explained where they act: `jaxoip.oip.targets`
(quantity, weighted), `jaxoip.oip.transforms` (jitter ... blur, the styles), `jaxoip.oip.param` (param),
`jaxoip.oip.facets` (diversity), `jaxoip.oip.targets` (selective) and `jaxoip.oip.optim` (optimizer).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from jaxtyping import Int

from jaxoip._check import check_float, check_int
from jaxoip.errors import JaxoipError, LayerError
from jaxoip.models.spec import SEARCH_KINDS, VECTOR_KINDS, get_layer, layer_shapes
from jaxoip.numerics import DEFAULT_PRECISION, PRECISION_HELP, Precision, check_precision, check_seed

# What a unit's value is: its activation, its pre-activation, or auto (logits of a softmax layer).
QUANTITIES = ("auto", "activation", "pre")
# How the search keeps its image a real one: not at all (the study's), projected (clip), or by construction.
PIXEL_RANGES = ("none", "clip", "sigmoid")
STUDY_SNAPSHOT_STEPS = (9, 18, 36, 72, 144, 288)
# Far beyond the study's 600; more would run for days, and the step counter is int32 on device.
MAX_STEPS = 1_000_000
# How the image is stepped (`jaxoip.oip.param`).
PARAMETERIZATIONS = ("pixels", "fourier", "maco")
# The update rule (`jaxoip.oip.optim`): the study's normalized-gradient step, or Adam.
OPTIMIZERS = ("normalized", "adam")
# Starts whose images match up to a shift with at least this correlation share a facet (`jaxoip.oip.facets`).
FACET_THRESHOLD = 0.5
# Presets of the transformations and penalties (`jaxoip.oip.transforms`).
STYLES: dict[str, dict] = {
    "study": {},
    "robust": dict(jitter=2.0, scale=0.1, rotate=10.0, tv=0.05, blur=0.5),
}
# The noise grids of the starts (`jaxoip.oip.noise`), for a 28x28 image.
DEFAULT_GRIDS = ((3, 3), (7, 7), (14, 14), (28, 28))


Terms = tuple[tuple[int, float], ...]


def check_terms(terms, what: str = "a weighted target") -> Terms:
    """(unit, weight) pairs with integer units >= 0 and finite weights, zero weights dropped; one line if the
    sum is empty or zero (a zero target has nothing to ascend)."""
    if isinstance(terms, (str, bytes)) or not hasattr(terms, "__iter__"):
        raise JaxoipError(f"{what} must be a sequence of (unit, weight) pairs, got {terms!r}")
    out: dict[int, float] = {}
    for term in terms:
        try:
            u, w = term
        except (TypeError, ValueError):
            raise JaxoipError(f"{what}: a term must be a (unit, weight) pair, got {term!r}") from None
        check_int(f"{what}: unit", u, 0)
        check_float(f"{what}: weight of unit {u}", w)
        out[int(u)] = out.get(int(u), 0.0) + float(w)
    if not out:
        raise JaxoipError(f"{what} needs at least one term")
    if not math.isfinite(sum(abs(w) for w in out.values())):
        raise JaxoipError(f"{what}: the weights overflow")
    kept = tuple((u, w) for u, w in sorted(out.items()) if w != 0)
    if not kept:
        raise JaxoipError(f"{what} is zero: its weights add up to 0 for every unit, so there is nothing to search")
    return kept


@dataclasses.dataclass(frozen=True)
class OIPConfig:
    """How the search steps: the optimizer, the parameterization, the transformations and the penalties.

    The defaults are the study's search: 600 steps of size 0.01 on the RMS-normalized gradient, re-standardizing
    the image. What is ascended is not here but in the objective (`jaxoip.oip.objectives`, `ObjectiveConfig`).
    See `jaxoip.oip.optim` (optimizer), `jaxoip.oip.param` (param, pixel_range), `jaxoip.oip.transforms`
    (jitter ... blur, the styles) and `jaxoip.oip.facets` (diversity).
    """

    steps: int = dataclasses.field(default=600, metadata={"help": "gradient steps"})
    epsilon: float = dataclasses.field(default=0.01, metadata={"help": "step size"})
    conv_criterion: float = dataclasses.field(
        default=2e-4, metadata={"help": "relative change below which a start counts as converged"}
    )
    snapshot_steps: tuple[int, ...] = dataclasses.field(
        default=STUDY_SNAPSHOT_STEPS,
        metadata={
            "help": "steps after which the image is kept, counted from 0 (9, 18, 36, ... are the README's and the "
            "site's steps 10, 19, 37, ..., counted from 1); the last one always is"
        },
    )
    early_stop: bool = dataclasses.field(
        default=False,
        metadata={"help": "stop a chunk when all its starts have converged (results then depend on the chunk)"},
    )
    grad_eps: float = dataclasses.field(default=1e-5, metadata={"help": "added to the gradient's RMS before dividing"})
    optimizer: str = dataclasses.field(
        default="normalized",
        metadata={
            "choices": OPTIMIZERS,
            "help": "update rule: normalized (the study's: epsilon times each image's gradient over its RMS) or adam "
            "(Optax's Adam direction times epsilon; --grad-eps unused)",
        },
    )
    param: str = dataclasses.field(
        default="pixels",
        metadata={
            "choices": PARAMETERIZATIONS,
            "help": "image parameterization: pixels, fourier (decorrelated, favours smooth patterns), or maco "
            "(optimizes the Fourier phase, the magnitude fixed to the training images' mean spectrum)",
        },
    )
    fourier_decay: float = dataclasses.field(
        default=1.0, metadata={"help": "fourier: coefficients scaled by 1 / frequency^decay"}
    )
    pixel_range: str = dataclasses.field(
        default="none",
        metadata={
            "choices": PIXEL_RANGES,
            "help": "keep the image's pixels in [0, 255]: none (the study's search), clip (projected ascent: clipped "
            "after every step) or sigmoid (the search variable maps through a sigmoid to pixels, as Lucid's)",
        },
    )
    jitter: float = dataclasses.field(
        default=0.0, metadata={"help": "random shift of up to this many pixels at every step"}
    )
    scale: float = dataclasses.field(default=0.0, metadata={"help": "random scaling by 1 +- this at every step"})
    rotate: float = dataclasses.field(
        default=0.0, metadata={"help": "random rotation of up to this many degrees at every step"}
    )
    tv: float = dataclasses.field(default=0.0, metadata={"help": "total-variation penalty weight"})
    l1: float = dataclasses.field(
        default=0.0, metadata={"help": "L1 penalty weight (mean absolute standardized pixel)"}
    )
    blur: float = dataclasses.field(
        default=0.0, metadata={"help": "blur penalty weight (pulls the image towards its blurred copy)"}
    )
    diversity: float = dataclasses.field(
        default=0.0, metadata={"help": "weight of the diversity penalty across a map's starts (0: off)"}
    )
    precision: Precision = dataclasses.field(
        default=DEFAULT_PRECISION,
        metadata={"help": f"matmul precision of every compiled pass: {PRECISION_HELP}"},
    )

    def __post_init__(self):
        for s in tuple(self.snapshot_steps):
            check_int("snapshot step", s, 0)
        object.__setattr__(self, "snapshot_steps", tuple(int(v) for v in self.snapshot_steps))
        check_precision(self.precision)
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_float("epsilon", self.epsilon, 0, lo_open=True)
        check_float("convergence criterion", self.conv_criterion, 0)
        check_float("grad_eps", self.grad_eps, 0, lo_open=True)
        for name in ("jitter", "scale", "rotate", "tv", "l1", "blur", "diversity", "fourier_decay"):
            check_float(name, getattr(self, name), 0)
        if self.optimizer not in OPTIMIZERS:
            raise JaxoipError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.param not in PARAMETERIZATIONS:
            raise JaxoipError(f"unknown parameterization {self.param!r}; choose from {', '.join(PARAMETERIZATIONS)}")
        if self.pixel_range not in PIXEL_RANGES:
            raise JaxoipError(f"unknown pixel range {self.pixel_range!r}; choose from {', '.join(PIXEL_RANGES)}")
        if self.scale >= 1:
            raise JaxoipError("scale must be below 1")

    @property
    def snapshots(self) -> tuple[int, ...]:
        """0-based steps after which the image is kept: the requested ones below `steps`, and the last."""
        return tuple(sorted({s for s in self.snapshot_steps if 0 <= s < self.steps - 1} | {self.steps - 1}))


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """How a layer's units are ascended (the commands' --quantity, --wake, --selective): the settings from which
    `jaxoip.oip.objectives.objective` builds the objective. Wake-up is on by default, as in the commands
    (`wake=False` with the defaults: exactly the study's search)."""

    quantity: str = dataclasses.field(
        default="auto",
        metadata={
            "choices": QUANTITIES,
            "help": "unit value: activation, pre (before the activation) or auto (class logits of a softmax layer, "
            "else the activation)",
        },
    )
    wake: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "while a ReLU map is zero for a start, ascend its pre-activation (its largest node), then the "
            "study's objective (off: the study's search)"
        },
    )
    selective: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "ascend the target's activation over its largest on the test images minus this times the mean "
            "of the same ratio over the layer's other maps (0: off)"
        },
    )

    def __post_init__(self):
        if self.quantity not in QUANTITIES:
            raise JaxoipError(f"unknown quantity {self.quantity!r}; choose from {', '.join(QUANTITIES)}")
        check_float("selective", self.selective, 0)
        object.__setattr__(self, "wake", bool(self.wake))
        object.__setattr__(self, "selective", float(self.selective))


def check_weighted(weighted) -> tuple[Terms, ...]:
    """Weighted sums of units (`check_terms` each), as a tuple; one line otherwise."""
    if isinstance(weighted, (str, bytes)) or not hasattr(weighted, "__iter__"):
        raise JaxoipError(f"weighted must be sums of (unit, weight) pairs, got {weighted!r}")
    return tuple(check_terms(terms, f"weighted target {k}") for k, terms in enumerate(weighted))


def style_config(style: str, **fields):
    """An `OIPConfig` with the preset of `style` (see `STYLES`), then `fields` on top (None: keep the preset)."""
    if style not in STYLES:
        raise JaxoipError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    values = dict(STYLES[style])
    values.update({k: v for k, v in fields.items() if v is not None})
    return OIPConfig(**values)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Weights of uniform random values drawn on each grid and smoothly upsampled to the image size.

    The grids are given for a 28x28 image and scaled to the model's input (`scaled_grids`): the (28, 28)
    grid is fine per-pixel noise; coarser grids give long-range fluctuations. Each channel of a colour
    image draws its own values.
    """

    name: str
    factors: tuple[float, ...]
    grids: tuple[tuple[int, int], ...] = DEFAULT_GRIDS
    smoothing_sigma: float = 0.0  # Optional Gaussian smoothing in pixels (0: none).

    def __post_init__(self):
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
        object.__setattr__(self, "grids", tuple(tuple(g) for g in self.grids))
        if len(self.factors) != len(self.grids):
            raise JaxoipError(f"recipe {self.name!r}: {len(self.factors)} factors for {len(self.grids)} grids")
        if not any(self.factors):
            raise JaxoipError(f"recipe {self.name!r}: all factors are zero")


RECIPES = {
    r.name: r
    for r in (
        Recipe("fine", (0.0, 0.0, 0.0, 1.0)),
        Recipe("coarse3", (1.0, 0.0, 0.0, 0.0)),
        Recipe("coarse7", (0.0, 1.0, 0.0, 0.0)),
        Recipe("coarse14", (0.0, 0.0, 1.0, 0.0)),
        # The study's start: per-pixel noise plus 0.2 of the 3x3 and 7x7 fluctuations.
        Recipe("study", (0.2, 0.2, 0.0, 1.0)),
    )
}
DEFAULT_RECIPES = tuple(RECIPES)


def get_recipes(names) -> tuple[Recipe, ...]:
    """Recipes by name (or passed through if already `Recipe`s); one grid list for all."""
    out = []
    for n in names:
        if isinstance(n, Recipe):
            out.append(n)
        elif n in RECIPES:
            out.append(RECIPES[n])
        else:
            raise JaxoipError(f"unknown noise recipe {n!r}; choose from {', '.join(RECIPES)}")
    if len({r.grids for r in out}) > 1 or len({r.smoothing_sigma for r in out}) > 1:
        raise JaxoipError("all recipes of one run must share their grids and smoothing")
    if not out:
        raise JaxoipError("no noise recipe given")
    return tuple(out)


def check_scan_args(
    restarts: int | None = None,
    precursor_starts: int = 64,
    screen: int = 8,
    seed: int = 0,
    chunk_size: int | None = None,
) -> None:
    """The scan's numeric arguments, checked before anything is loaded or compiled."""
    check_int("restarts", restarts, 1, optional=True)
    check_int("precursor starts", precursor_starts, 1)
    check_int("screen", screen, 1)
    check_seed(seed)
    check_int("chunk size", chunk_size, 1, optional=True)


def check_target(config, layer_name: str, map_indices, node=None, weighted=(), options: ObjectiveConfig | None = None):
    """Validates a target on a network's plain-data `config` (before JAX is imported; once loaded, the objective
    checks itself): a map or vector layer, indices in range (of the `weighted` sums, if any), the node inside
    the map, the selectivity only on single units."""
    spec = get_layer(config, layer_name, SEARCH_KINDS)
    shape = layer_shapes(config)[layer_name]
    vector = spec.kind in VECTOR_KINDS
    check_indices(map_indices, layer_name, shape[-1], vector, len(weighted))
    check_units(weighted, layer_name, shape[-1], vector)
    if node is not None:
        if vector:
            raise LayerError(f"--node applies to maps, not to the vector layer {layer_name}")
        i, j = node
        h, w = shape[0], shape[1]
        if not (0 <= i < h and 0 <= j < w):
            raise LayerError(f"node ({i}, {j}) outside the {h}x{w} maps of {layer_name}")
    if options is not None and options.selective > 0 and weighted:
        raise JaxoipError(SELECTIVE_WEIGHTED)


def check_indices(maps, layer_name: str, channels: int, vector: bool, n_weighted: int = 0) -> Int[np.ndarray, " m"]:
    """Target indices as int32: integers, at least one, each a unit of the layer (`channels` units) or, with
    `n_weighted` sums, one of the sums; one line naming the first that is not."""
    maps = np.asarray(maps)
    if maps.size == 0:
        raise LayerError("no map index given")
    if not np.issubdtype(maps.dtype, np.integer):
        number = np.issubdtype(maps.dtype, np.number)
        if not (number and np.all(np.isfinite(maps)) and np.all(maps == np.round(maps))):
            raise LayerError(f"map indices must be integers, got {maps.reshape(-1)[:5].tolist()}")
    maps = maps.astype(np.int64).reshape(-1)
    n = n_weighted or channels
    if maps.min() < 0 or maps.max() >= n:
        bad = int(maps[(maps < 0) | (maps >= n)][0])
        if n_weighted:
            raise LayerError(f"weighted target {bad} out of range: {n} given")
        what = "dense node" if vector else "map index"
        raise LayerError(f"{what} {bad} out of range: {layer_name} has {'nodes' if vector else 'maps'} 0..{n - 1}")
    return maps.astype(np.int32)


def check_units(weighted: tuple[Terms, ...], layer_name: str, channels: int, vector: bool) -> None:
    """Every unit of the weighted sums is one of the layer's `channels`; one line naming the first that is not."""
    for terms in weighted:
        for u, _ in terms:
            if not 0 <= u < channels:
                what = "dense node" if vector else "map index"
                raise LayerError(f"{what} {u} out of range: {layer_name} has 0..{channels - 1}")


SELECTIVE_WEIGHTED = (
    "selective compares one map with the layer's other maps; it does not apply to weighted targets (--target)"
)


def target_maps(config, layer_name: str, map_indices, weighted=()) -> Int[np.ndarray, " m"]:
    """The units a search of `layer_name` targets: `map_indices`, or all of the layer's maps (or of the
    `weighted` sums) when None; a one-line error when the layer is not a map or vector layer."""
    get_layer(config, layer_name, SEARCH_KINDS)
    n = len(weighted) if weighted else layer_shapes(config)[layer_name][-1]
    return np.arange(n) if map_indices is None else np.asarray(map_indices).reshape(-1)
