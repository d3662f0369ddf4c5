"""`ScanResult`: a whole-layer scan's arrays, indexed per map and start, with its per-map table and summary.

`jaxoip.oip.scan.scan_maps` makes one; `jaxoip.oip.scan.write_scan` writes it; notebooks read its `table()`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import numpy as np
from jaxtyping import Bool, Float, Int, Shaped

from jaxoip._check import check_type
from jaxoip.analysis.exemplars import Exemplars
from jaxoip.data.mnist import Standardization
from jaxoip.display import html
from jaxoip.oip.facets import FACET_THRESHOLD, MapFacets, map_facets
from jaxoip.oip.objectives import Objective
from jaxoip.oip.precursor import PrecursorResult
from jaxoip.oip.quality import MapQuality
from jaxoip.oip.search import OIPConfig, OIPResult
from jaxoip.oip.similarity import similar_maps
from jaxoip.oip.targets import Target

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass
class ScanResult:
    """A scan of maps `map_indices` of `layer_name` with `restarts` starts each.

    Arrays indexed [map position, start]; `table` has one row per map.
    """

    layer_name: str
    map_indices: Int[np.ndarray, " m"]
    restarts: int
    node: tuple[int, int] | None
    config: OIPConfig
    recipe_names: tuple[str, ...]
    start_recipe: Int[np.ndarray, "m r"]  # recipe index of every start
    oip: OIPResult  # flat over (map, start)
    precursor: PrecursorResult
    data_mean: Float[np.ndarray, " c"] | None  # objective on real images, mean over the test set
    data_max: Float[np.ndarray, " c"] | None
    standardization: Standardization
    seed: int
    screen: int = 1
    seconds: float = 0.0  # This process's scan, from its arguments to the last start searched.
    search_seconds: float = 0.0  # This process's search (part of `seconds`).
    earlier_search_seconds: float = 0.0  # The search time of groups reused from a killed run (`partial_dir`).
    options: dict = dataclasses.field(default_factory=dict)  # Command-line options, recorded in the summary.
    facet_threshold: float = FACET_THRESHOLD  # Shift-invariant correlation for two starts to share a facet.
    quality: MapQuality | None = None  # The per-map measures (`jaxoip.oip.quality`), set by `scan_maps`.
    # Every map's objective over the test images as a histogram: edges (c, bins + 1), counts (c, bins).
    data_histogram: tuple[Float[np.ndarray, "m e"], Int[np.ndarray, "m b"]] | None = None  # edges, counts
    # Whether a largest value <= 0 on the data means a unit that never fires: after a ReLU, not a linear unit
    # (a logit, a pre-activation), whose values may all be negative and still carry information.
    can_be_dead: bool = True
    data_source: str | None = None  # Where the data of the data pass came from (`MNIST.source`).
    exemplars: Exemplars | None = None  # The test images that drive each map hardest (`scan_maps(exemplars=k)`).
    target: Objective | None = None  # What was ascended (`jaxoip.oip.objectives`); None: every map's mean.

    @property
    def weighted(self) -> tuple:
        """The weighted sums the targets are (target i is sum i), or () when target m is unit m."""
        return self.target.weighted if self.target is not None else ()

    _facets: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def _per_map(self, a: Shaped[np.ndarray, "m*r ..."]) -> Shaped[np.ndarray, "m r ..."]:
        return a.reshape(len(self.map_indices), self.restarts, *a.shape[1:])

    @property
    def images(self) -> Float[np.ndarray, "m r H W ch"]:
        """Final standardized images."""
        return self._per_map(self.oip.images)

    @property
    def objective(self) -> Float[np.ndarray, "m r"]:
        return self._per_map(self.oip.objective)

    @property
    def traces(self) -> Float[np.ndarray, "m r steps"]:
        return self._per_map(self.oip.traces)

    @property
    def best_start(self) -> Int[np.ndarray, " m"]:
        return np.argmax(self.objective, axis=1)

    @property
    def best_images(self) -> Float[np.ndarray, "m H W ch"]:
        """The best start's image per map, standardized."""
        return self.images[np.arange(len(self.map_indices)), self.best_start]

    @property
    def found(self) -> Bool[np.ndarray, " m"]:
        """Maps for which some start reached a positive objective."""
        return self.objective.max(axis=1) > 0

    @property
    def woken(self) -> Bool[np.ndarray, "m r"]:
        """Starts that ascended the pre-activation at some step (the objective's wake-up)."""
        w = self.oip.woken if self.oip.woken is not None else np.zeros(self.oip.objective.shape, bool)
        return self._per_map(w)

    @property
    def labels(self) -> list[str]:
        """Each searched target's name for figures: `map 5`, or a weighted target's own description (`4-9`)."""
        if self.weighted:
            return [Target(self.layer_name, self.weighted[m]).label for m in self.map_indices]
        return [f"map {m}" for m in self.map_indices]

    @property
    def method(self) -> Shaped[np.ndarray, " m"]:
        """Per map, how its best OIP was reached: `direct`, `woken` (after ascending the pre-activation) or `none`."""
        m = np.arange(len(self.map_indices))
        woke = self.woken[m, self.best_start]
        return np.where(~self.found, "none", np.where(woke, "woken", "direct"))

    def facets(self, threshold: float | None = None) -> list[MapFacets]:
        """Each map's starts grouped into facets (`jaxoip.oip.facets.map_facets`)."""
        threshold = self.facet_threshold if threshold is None else threshold
        if threshold not in self._facets:  # table(), summary(), oips.npz and the gallery all ask for them.
            self._facets[threshold] = scan_facets(self, threshold)
        return self._facets[threshold]

    def similar_maps(self, k: int = 5) -> tuple[Int[np.ndarray, "m k"], Float[np.ndarray, "m k"]]:
        """For each map, the positions of the `k` maps whose best OIPs are most alike and those correlations,
        most similar first (`jaxoip.oip.similarity.similar_maps`)."""
        return similar_maps(self.best_images, k)

    @property
    def image_steps_per_second(self) -> float:
        """Over all starts and the search time of all groups, in this process or the killed one it resumed."""
        seconds = self.search_seconds + self.earlier_search_seconds
        return self.oip.objective.size * self.oip.steps_run / max(seconds, 1e-9)

    def table(self) -> pd.DataFrame:
        """One row per map: data activation, precursor row, recipe, objective statistics, flags."""
        obj = self.objective
        m = len(self.map_indices)
        best = self.best_start
        conv = self._per_map(self.oip.converged_step)[np.arange(m), best]
        zero = self._per_map(self.oip.stayed_zero)
        pre = self.precursor.table().iloc[self.map_indices].reset_index(drop=True)
        import pandas as pd  # Only for tables: a scan imports it in the background (jaxoip._prefetch).

        df = pd.DataFrame({"map": self.map_indices})
        if self.weighted:
            df["target"] = self.labels
        if self.data_mean is not None:
            df["data_mean"] = self.data_mean[self.map_indices]
            df["data_max"] = self.data_max[self.map_indices]
        df = pd.concat([df, pre.drop(columns=["map", "best_recipe", "silent_on_noise"])], axis=1)
        recipe_of_best = self.start_recipe[np.arange(m), best]
        df["recipe"] = [self.recipe_names[i] for i in recipe_of_best]
        df["best_objective"] = obj.max(axis=1)
        df["mean_objective"] = obj.mean(axis=1)
        df["std_objective"] = obj.std(axis=1)
        df["best_start"] = best
        df["converged_step"] = conv
        df["frac_stayed_zero"] = zero.mean(axis=1)
        df["found"] = self.found
        df["method"] = self.method
        df["frac_woken"] = self.woken.mean(axis=1)
        fac = self.facets()
        df["facets"] = [len(f.representatives) for f in fac]
        df["facet_sizes"] = [f.sizes.tolist() for f in fac]
        df["facet_starts"] = [f.representatives.tolist() for f in fac]
        df["facet_objectives"] = [np.round(f.objectives, 6).tolist() for f in fac]
        df["silent_on_noise"] = self.precursor.silent_on_noise[self.map_indices]
        if self.data_max is not None:
            df["dead_on_data"] = (self.data_max[self.map_indices] <= 0) & self.can_be_dead
        for name, v in (self.quality.columns() if self.quality is not None else {}).items():
            # Undefined measures (e.g. maps dead on data) stay empty in maps.csv, null in maps.json.
            df[name] = pd.array([None if np.isnan(x) else int(x) for x in v], "Int64") if name.endswith("rank") else v
        return df

    def _repr_html_(self) -> str | None:
        """Jupyter's view of a scan, drawn by the view registered for it (`jaxoip.display`): the summary and a
        compact table with each map's best OIP as a thumbnail (`jaxoip.site.notebook`)."""
        return html(self)

    def summary(self, table: pd.DataFrame | None = None) -> ScanSummary:
        """The scan's counts, settings and timings (`ScanSummary.to_dict()` is summary.json); `table`: this scan's
        `table()` where the caller has it already (a writer writes both)."""
        t = self.table() if table is None else table
        dead = t["dead_on_data"] if "dead_on_data" in t else None
        return ScanSummary(
            layer=self.layer_name,
            maps=int(len(self.map_indices)),
            restarts=self.restarts,
            steps=self.config.steps,
            found=int(t["found"].sum()),
            silent_on_noise=int(t["silent_on_noise"].sum()),
            seconds=round(self.seconds, 2),
            search_seconds=round(self.search_seconds, 2),
            earlier_search_seconds=round(self.earlier_search_seconds, 2),
            image_steps_per_second=round(self.image_steps_per_second, 1),
            backend=jax.default_backend(),
            devices=len(jax.devices()),
            seed=self.seed,
            screen=self.screen,
            precision=self.config.precision,
            jax_version=jax.__version__,
            woken=int((t["method"] == "woken").sum()),
            facet_threshold=self.facet_threshold,
            oip_config=dataclasses.asdict(self.config),
            objective=None if self.target is None else objective_summary(self.target),
            options=self.options,
            dead_on_data=None if dead is None else int(dead.sum()),
            live_maps=None if dead is None else int((~dead).sum()),
            found_of_live=None if dead is None else int((t["found"] & ~dead).sum()),
            quality=None if self.quality is None else self.quality.summary,
            data_source=self.data_source,
        )


@dataclasses.dataclass(frozen=True)
class ScanSummary:
    """A scan's counts, settings and timings; `str()` gives a few readable lines, `to_dict()` summary.json.

    Timings are this process's; after a resume, `earlier_search_seconds` is the search time the killed
    run spent on the groups reused (so `seconds` >= `search_seconds` always holds).
    """

    layer: str
    maps: int
    restarts: int
    steps: int
    found: int
    silent_on_noise: int
    seconds: float
    search_seconds: float
    earlier_search_seconds: float
    image_steps_per_second: float
    backend: str
    devices: int
    seed: int
    screen: int
    precision: str
    jax_version: str
    woken: int
    facet_threshold: float
    oip_config: dict
    objective: dict | None
    options: dict
    dead_on_data: int | None = None  # The three counts need the data pass (None without MNIST).
    live_maps: int | None = None
    found_of_live: int | None = None
    quality: dict | None = None  # Aggregates of the per-map measures (`jaxoip.oip.quality.summarize`).
    data_source: str | None = None  # None: the scan had no data.

    def to_dict(self) -> dict:
        """The fields as summary.json holds them (the data counts only when known)."""
        out = dataclasses.asdict(self)
        for k in ("dead_on_data", "live_maps", "found_of_live", "quality", "objective"):
            if out[k] is None:
                del out[k]
        return out

    def __str__(self) -> str:
        live = f" ({self.found_of_live} of {self.live_maps} live on data)" if self.live_maps is not None else ""
        dead = "n/a (no data)" if self.dead_on_data is None else self.dead_on_data
        earlier = f" (+{self.earlier_search_seconds:.1f} s before the resume)" if self.earlier_search_seconds else ""
        return (
            f"scan of {self.layer}: {self.maps} maps, {self.restarts} starts each, {self.steps} steps\n"
            f"  OIP found for {self.found} of {self.maps}{live}; woken {self.woken}; "
            f"silent on noise {self.silent_on_noise}; dead on data {dead}\n"
            f"  precision {self.precision}, seed {self.seed}, {self.devices} {self.backend} device(s)\n"
            f"  {self.seconds:.1f} s, search {self.search_seconds:.1f} s{earlier}, "
            f"{self.image_steps_per_second:.0f} image-steps/s"
        )

    def __repr__(self) -> str:
        return f"ScanSummary: {self}"


def objective_histograms(
    values: Float[np.ndarray, "n c"], bins: int = 30
) -> tuple[Float[np.ndarray, "c bins+1"], Int[np.ndarray, "c bins"]]:
    """Per map (column), the histogram of its objective over the images (rows), each on its own range."""
    values = np.asarray(values, np.float64)
    edges = np.zeros((values.shape[1], bins + 1))
    counts = np.zeros((values.shape[1], bins), np.int64)
    for m in range(values.shape[1]):
        lo, hi = float(values[:, m].min()), float(values[:, m].max())
        counts[m], edges[m] = np.histogram(values[:, m], bins, range=(lo, hi if hi > lo else lo + 1.0))
    return edges, counts


def scan_facets(result: ScanResult, threshold: float = FACET_THRESHOLD) -> list[MapFacets]:
    """`map_facets` for every map of a `ScanResult`."""
    return [map_facets(m, result.images[i], result.objective[i], threshold) for i, m in enumerate(result.map_indices)]


def facet_images(
    result: ScanResult, threshold: float = FACET_THRESHOLD
) -> list[dict[str, int | Shaped[np.ndarray, "facets ..."]]]:
    """For the gallery: per map (in `result.map_indices` order) a dict with `map`, `images` (F, 28, 28, 1)
    standardized representatives, `pixels` (same in pixel units), `objectives` (F,) and `sizes` (F,) (starts
    per facet), facets ordered by objective (the first is the map's best OIP)."""
    check_type("result", result, ScanResult, " (from scan_maps)")
    out = []
    for i, f in enumerate(result.facets(threshold)):  # Computed once per ScanResult and threshold.
        imgs = result.images[i][f.representatives]
        out.append(
            dict(
                map=f.map_index,
                images=imgs,
                pixels=result.standardization.to_pixels(imgs),
                objectives=f.objectives,
                sizes=f.sizes,
            )
        )
    return out


def objective_summary(objective: Objective) -> dict:
    """What was ascended, as summary.json holds it: the layer, node, quantity, wake-up, selectivity, sums."""
    return {
        "layer": objective.layer.name,
        "node": None if objective.node is None else list(objective.node),
        "quantity": objective.quantity,
        "wake": objective.wake,
        "selective": objective.selective,
        "weighted": [[list(term) for term in terms] for terms in objective.weighted],
    }
