"""The plan of a scan, made once before any work: `plan_scan(...) -> ScanPlan`.

A `ScanPlan` is a frozen value holding everything a scan of one layer will do, resolved and checked: the layer
(a `Layer` handle), the objective (`jaxoip.oip.objectives`), the targets, the starts, the recipes, the chunk
layout, the search's derived setup, and the memory its arrays take (`scan_arrays`, refused in one line when
they do not fit). `jaxoip.oip.scan.scan_layer` runs a plan; the commands plan every layer before they touch
their output folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jaxtyping import Int

from jaxoip._check import check_float, check_int, check_type
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import TrainedModel, check_trained
from jaxoip.models.memory import PlannedArray, check_arrays
from jaxoip.models.network import Layer
from jaxoip.numerics import check_seed
from jaxoip.oip.config import ObjectiveConfig, Terms, check_scan_args
from jaxoip.oip.facets import FACET_THRESHOLD
from jaxoip.oip.noise import DEFAULT_RECIPES, Recipe, get_recipes
from jaxoip.oip.objectives import Objective, resolve_objective
from jaxoip.oip.search import OIPConfig, SearchSetup, default_chunk_size
from jaxoip.oip.sizing import ChunkSizing, size_search_chunk
from jaxoip.oip.two_choice import QualityConfig
from jaxoip.shapes import MapIndices


def default_restarts() -> int:
    """16 starts per map on an accelerator; 8 on a CPU, so the default scan stays within minutes."""
    return 8 if jax.default_backend() == "cpu" else 16


@dataclasses.dataclass(frozen=True, eq=False)
class ScanPlan:
    """Everything a scan of one layer will do, resolved and checked once by `plan_scan`, memory included.

    The precursor scan, the screened starts, the search, the minimizing search and the exemplars take the
    plan and check nothing again. `setup` holds what the search derives from the scan (the transformations'
    seed, the diversity groups, the pixel standardization); `sizing` how the chunk was chosen, from XLA's memory
    analysis of the compiled search (`jaxoip.oip.sizing.size_search_chunk`); `exemplars` is 0 where the
    objective has no per-map exemplars.
    """

    trained: TrainedModel
    objective: Objective
    maps: Int[np.ndarray, " m"]
    restarts: int
    config: OIPConfig
    setup: SearchSetup
    recipes: tuple[Recipe, ...]
    precursor_starts: int
    screen: int
    seed: int
    chunk: int
    sizing: ChunkSizing
    quality: QualityConfig | None
    facet_threshold: float
    exemplars: int

    @property
    def layer(self) -> Layer:
        return self.objective.layer

    @property
    def node(self) -> tuple[int, int] | None:
        return self.objective.node

    @property
    def image_steps(self) -> int:
        """The search's image-steps (what the progress display counts)."""
        return len(self.maps) * self.restarts * self.config.steps

    def check_data(self, data: MNIST | None) -> None:
        """One line when the scan needs MNIST and has none: the selective objective and MACO do."""
        check_data(data, optional=True)
        if data is not None:
            return
        if self.objective.selective > 0:
            raise JaxoipError(
                "--selective needs the test images: it normalizes each map by its largest activation on them; "
                "no MNIST data was found"
            )
        if self.config.param == "maco":
            raise JaxoipError(
                "--param maco needs the training images: its fixed magnitude is their mean amplitude spectrum; "
                "no MNIST data was found"
            )


def plan_scan(
    trained: TrainedModel,
    layer: str | Layer | Objective = "Conv2D_3",
    maps: MapIndices | None = None,
    restarts: int | None = None,
    config: OIPConfig = OIPConfig(),
    recipes: Sequence[str | Recipe] = DEFAULT_RECIPES,
    precursor_starts: int = 64,
    screen: int = 8,
    seed: int = 0,
    node: tuple[int, int] | None = None,
    chunk_size: int | None = None,
    quality: QualityConfig | None = QualityConfig(),
    facet_threshold: float = FACET_THRESHOLD,
    exemplars: int = 0,
    options: ObjectiveConfig | None = None,
    weighted: tuple[Terms, ...] = (),
) -> ScanPlan:
    """The scan of `layer`'s maps (`maps`: target indices, default all), checked before any work: the layer
    resolved once, the objective built from `options` (quantity, wake-up, selectivity; default
    `ObjectiveConfig()`) and the `weighted`
    sums (or `layer` an `Objective` value itself), the targets, the recipes, the chunk layout and the memory
    the scan's arrays take. See `scan_maps`."""
    check_trained(trained)
    check_type("config", config, OIPConfig)
    check_scan_args(restarts, precursor_starts, screen, seed, chunk_size)
    check_float("facet threshold", facet_threshold, 0, 1)
    check_int("exemplars", exemplars, 0)
    if quality is not None:
        check_type("quality", quality, QualityConfig)
    recipes = get_recipes(recipes)
    objective = resolve_objective(trained.model, layer, node, options, weighted)
    maps = objective.check_targets(np.arange(objective.n_targets) if maps is None else maps)
    restarts = default_restarts() if restarts is None else int(restarts)
    # Images per device, whatever the device count: a scan is the same bits on any number of devices.
    chunk = min(chunk_size or default_chunk_size(trained.config), len(maps) * restarts)
    seed = check_seed(seed)
    group = 1
    if config.diversity > 0:
        # A map's starts must share a chunk: groups of `restarts` consecutive images.
        if restarts < 2:
            raise JaxoipError("diversity needs at least 2 starts per map")
        group = restarts
        chunk = max(1, round(chunk / restarts)) * restarts
    # The pixel range [0, 255] in the model's standardized values; the transformations' keys from `seed`.
    std = trained.standardization
    setup = SearchSetup(seed, group, *((std.mean, std.std) if config.pixel_range != "none" else ((), ())))
    check_arrays(
        scan_arrays(
            trained.config.input_shape,
            objective.n_targets,
            len(maps),
            restarts,
            config,
            len(recipes),
            precursor_starts,
            screen,
            chunk,
        )
    )
    # The search's own program, compiled for the chunk, says what it takes; it is the one the scan runs.
    sizing = size_search_chunk(trained.model, objective, config, setup, chunk, group, explicit=chunk_size is not None)
    return ScanPlan(
        trained=trained,
        objective=objective,
        maps=maps,
        restarts=restarts,
        config=config,
        setup=setup,
        recipes=recipes,
        precursor_starts=int(precursor_starts),
        screen=int(screen),
        seed=seed,
        chunk=sizing.chunk,
        sizing=sizing,
        quality=quality,
        facet_threshold=float(facet_threshold),
        exemplars=exemplars if objective.per_map else 0,
    )


def scan_arrays(
    input_shape: tuple[int, ...],
    units: int,
    maps: int,
    restarts: int,
    config: OIPConfig,
    n_recipes: int,
    precursor_starts: int,
    screen: int,
    chunk: int,
) -> list[PlannedArray]:
    """The large arrays of a scan: `units` maps measured by the precursor scan, `maps` searched."""
    image = math.prod(input_shape) * 4
    shape = "x".join(str(v) for v in input_shape) + "x4 bytes"
    snaps, steps = len(config.snapshots), config.steps
    cand = maps * restarts * screen
    n = maps * restarts
    planned = [
        PlannedArray(
            f"--precursor-starts {precursor_starts}",
            "the precursor images",
            f"{n_recipes} recipes x {precursor_starts} starts x {shape}",
            n_recipes * precursor_starts * image,
        ),
        PlannedArray(
            f"--precursor-starts {precursor_starts}",
            "the precursor activations",
            f"{n_recipes} recipes x {precursor_starts} starts x {units} maps x 4 bytes",
            n_recipes * precursor_starts * units * 4,
            device=False,
        ),
        PlannedArray(
            f"--restarts {restarts} --screen {screen}",
            "the candidate images",
            f"{maps} maps x {restarts} restarts x {screen} screen x {shape}",
            cand * image,
        ),
        PlannedArray(
            f"--restarts {restarts}",
            "the searched images and their snapshots",
            f"{maps} maps x {restarts} restarts x (1 + {snaps} snapshots) x {shape}",
            n * (1 + snaps) * image,
            device=False,
        ),
        PlannedArray(
            f"--restarts {restarts} --steps {steps}",
            "the objective traces",
            f"{maps} maps x {restarts} restarts x {steps} steps x 4 bytes",
            n * steps * 4,
            device=False,
        ),
        PlannedArray(
            f"--chunk-size {chunk} --steps {steps}",
            "a search chunk's traces and snapshots",
            f"{chunk} images x ({steps} steps x 4 bytes + {snaps} snapshots x {shape})",
            chunk * (steps * 4 + snaps * image),
        ),
    ]
    if screen > 1:
        planned.append(
            PlannedArray(
                f"--restarts {restarts} --screen {screen}",
                "the candidates' activations",
                f"{maps} maps x {restarts} restarts x {screen} screen x {units} maps x 4 bytes",
                cand * units * 4,
                device=False,
            )
        )
    return planned
