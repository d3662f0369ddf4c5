"""The seed comparison's settings: `CompareConfig`, validated on construction, and the values it accepts."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping

from jaxoip._check import INT32_MAX, check_float, check_int
from jaxoip.errors import JaxoipError, LayerError
from jaxoip.numerics import check_seed
from jaxoip.oip.config import ObjectiveConfig, OIPConfig

OIP_SOURCES = ("scan", "shared")
# scan_maps arguments that the comparison sets itself (node: the measures need the map-mean objective).
_SET_BY_COMPARE = ("trained", "layer_name", "map_indices", "restarts", "config", "seed", "progress", "node")


def check_scan_options(options) -> tuple[tuple[str, object], ...]:
    """`options` (a mapping or (name, value) pairs) as sorted pairs; a JaxoipError for unknown names."""
    from jaxoip.oip.scan import scan_maps  # Here, not above: the config loads without JAX.

    items = tuple(sorted(dict(options).items()))
    accepted = set(inspect.signature(scan_maps).parameters) - set(_SET_BY_COMPARE)
    for name, _ in items:
        if name not in accepted:
            raise JaxoipError(f"unknown OIP scan option {name!r}; scan_maps accepts {', '.join(sorted(accepted))}")
    return items


CONV_LAYERS = ("Conv2D_1", "Conv2D_2", "Conv2D_3")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What to compare and how; the defaults are the study's comparison.

    `max_samples` caps the spatial samples per layer: each test image contributes
    min(H*W, ceil(max_samples / images)) positions of the layer's maps, drawn at random without
    replacement (image i of every batch of 500 gets its own draw; all models see the same positions).

    The OIPs of matched maps come from `compare_oips.map_oips`: `oip_source` "scan" is the improved search
    (`scan.scan_maps`, with `oip_scan_options` as extra keyword arguments, e.g. to wake silent maps),
    "shared" the plain search from the same `oip_restarts` starts of recipe `oip_recipe` for every map;
    both run `oip` (an OIPConfig). `oip_max_shift` bounds the translations of the shift-invariant
    similarity.
    """

    layers: tuple[str, ...] = dataclasses.field(default=CONV_LAYERS, metadata={"help": "conv layers to compare"})
    test_subset: int | None = dataclasses.field(
        default=None, metadata={"help": "compare on the first N test images only"}
    )
    max_samples: int = dataclasses.field(default=200_000, metadata={"help": "spatial samples per layer"})
    blocks: int = dataclasses.field(
        default=100, metadata={"help": "blocks of test images resampled by the image bootstrap"}
    )
    bootstrap: int = dataclasses.field(default=200, metadata={"help": "bootstrap replicates"})
    ci: float = dataclasses.field(default=0.95, metadata={"help": "level of the bootstrap confidence intervals"})
    thresholds: tuple[float, ...] = dataclasses.field(
        default=(0.5, 0.7, 0.9), metadata={"help": "report the fraction of matched maps correlated above each"}
    )
    oip_layer: str | None = dataclasses.field(
        default="Conv2D_3", metadata={"help": "layer of the OIP comparison, one of the compared layers (none: skip)"}
    )
    oip_maps: int = dataclasses.field(
        default=16, metadata={"help": "matched maps per pair, evenly spaced in the ranking of their correlation"}
    )
    oip_restarts: int = dataclasses.field(default=8, metadata={"help": "OIP starts per map"})
    oip: OIPConfig = dataclasses.field(default=OIPConfig(), metadata={"flag": False, "help": "the OIP search"})
    oip_objective: ObjectiveConfig = dataclasses.field(
        default=ObjectiveConfig(), metadata={"flag": False, "help": "what the OIP search ascends (wake-up)"}
    )
    oip_recipe: str = dataclasses.field(
        default="study", metadata={"help": "noise recipe of the starts of the 'shared' OIP source"}
    )
    oip_source: str = dataclasses.field(
        default="scan",
        metadata={
            "choices": OIP_SOURCES,
            "help": "OIP search: 'scan' (improved: best recipe, screened starts) or 'shared' (same starts for "
            "every map)",
        },
    )
    oip_scan_options: Mapping | tuple[tuple[str, object], ...] = dataclasses.field(
        default=(), metadata={"flag": False, "help": "extra keyword arguments of scan.scan_maps"}
    )
    oip_max_shift: int = dataclasses.field(
        default=7, metadata={"help": "largest translation (pixels) of the shift-invariant OIP similarity"}
    )
    seed: int = dataclasses.field(
        default=0, metadata={"help": "seed of positions, image shuffle, untrained networks, bootstrap and OIP starts"}
    )

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not self.layers:
            raise JaxoipError("no layer to compare")
        check_int("max_samples", self.max_samples, 1, INT32_MAX)
        check_int("blocks", self.blocks, 2, INT32_MAX)
        check_int("bootstrap", self.bootstrap, 1)
        check_int("test_subset", self.test_subset, 2, INT32_MAX, optional=True)
        if self.test_subset is not None and self.blocks > self.test_subset:
            raise JaxoipError(f"blocks ({self.blocks}) must be at most the test subset ({self.test_subset} images)")
        check_int("oip_maps", self.oip_maps, 1)
        check_int("oip_restarts", self.oip_restarts, 1)
        check_seed(self.seed)
        check_int("oip_max_shift", self.oip_max_shift)
        check_float("ci", self.ci, 0, 1, lo_open=True, hi_open=True)
        for t in self.thresholds:
            check_float("threshold", t, -1, 1)
        if self.oip_layer is not None:
            if self.oip_layer not in self.layers:
                raise LayerError(
                    f"the OIP layer {self.oip_layer!r} is not among the compared layers "
                    f"{', '.join(self.layers)} (add it, or skip the OIP comparison with oip_layer None)"
                )
            if self.oip_restarts < 2 or self.oip_maps < 2:
                raise JaxoipError("the OIP comparison needs at least 2 restarts and 2 maps")
        if self.oip_source not in OIP_SOURCES:
            raise JaxoipError(f"unknown OIP source {self.oip_source!r}; choose from {', '.join(OIP_SOURCES)}")
        from jaxoip.oip.noise import get_recipes  # Here, not above: the config loads without JAX.

        get_recipes([self.oip_recipe])
        object.__setattr__(self, "oip_scan_options", check_scan_options(self.oip_scan_options))
        if not 0 <= self.oip_max_shift < 14:
            raise JaxoipError(f"oip_max_shift must be in 0..13 pixels, got {self.oip_max_shift}")
