"""`ScanResult`: a whole-layer scan's arrays, indexed per map and start, with its per-map table and summary.

`jaxoip.scan.scan_maps` makes one; `jaxoip.scan.write_scan` writes it; notebooks read its `table()`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pandas as pd
from jaxtyping import Bool, Float, Int, Shaped

from jaxoip.data import Standardization
from jaxoip.facets import FACET_THRESHOLD, MapFacets, map_facets
from jaxoip.oip import OIPConfig, OIPResult
from jaxoip.precursor import PrecursorResult


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
    seconds: float = 0.0
    search_seconds: float = 0.0
    options: dict = dataclasses.field(default_factory=dict)  # Command-line options, recorded in the summary.
    facet_threshold: float = FACET_THRESHOLD  # Shift-invariant correlation for two starts to share a facet.
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
        """Starts that ascended the pre-activation at some step (`OIPConfig.wake`)."""
        w = self.oip.woken if self.oip.woken is not None else np.zeros(self.oip.objective.shape, bool)
        return self._per_map(w)

    @property
    def method(self) -> Shaped[np.ndarray, " m"]:
        """Per map, how its best OIP was reached: `direct`, `woken` (after ascending the pre-activation) or `none`."""
        m = np.arange(len(self.map_indices))
        woke = self.woken[m, self.best_start]
        return np.where(~self.found, "none", np.where(woke, "woken", "direct"))

    def facets(self, threshold: float | None = None) -> list[MapFacets]:
        """Each map's starts grouped into facets (`jaxoip.facets.map_facets`)."""
        threshold = self.facet_threshold if threshold is None else threshold
        if threshold not in self._facets:  # table(), summary(), oips.npz and the gallery all ask for them.
            self._facets[threshold] = scan_facets(self, threshold)
        return self._facets[threshold]

    @property
    def image_steps_per_second(self) -> float:
        return self.oip.objective.size * self.oip.steps_run / max(self.search_seconds, 1e-9)

    def table(self) -> pd.DataFrame:
        """One row per map: data activation, precursor row, recipe, objective statistics, flags."""
        obj = self.objective
        m = len(self.map_indices)
        best = self.best_start
        conv = self._per_map(self.oip.converged_step)[np.arange(m), best]
        zero = self._per_map(self.oip.stayed_zero)
        pre = self.precursor.table().iloc[self.map_indices].reset_index(drop=True)
        df = pd.DataFrame({"map": self.map_indices})
        if self.config.weighted:
            from jaxoip.targets import Target

            df["target"] = [Target(self.layer_name, self.config.weighted[m]).label for m in self.map_indices]
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
            df["dead_on_data"] = self.data_max[self.map_indices] <= 0
        return df

    def summary(self) -> dict:
        t = self.table()
        out = {
            "layer": self.layer_name,
            "maps": int(len(self.map_indices)),
            "restarts": self.restarts,
            "steps": self.config.steps,
            "found": int(t["found"].sum()),
            "silent_on_noise": int(t["silent_on_noise"].sum()),
            "seconds": round(self.seconds, 2),
            "search_seconds": round(self.search_seconds, 2),
            "image_steps_per_second": round(self.image_steps_per_second, 1),
            "backend": jax.default_backend(),
            "devices": len(jax.devices()),
            "seed": self.seed,
            "screen": self.screen,
            "precision": self.config.precision,
            "jax_version": jax.__version__,
            "woken": int((t["method"] == "woken").sum()),
            "facet_threshold": self.facet_threshold,
            "oip_config": dataclasses.asdict(self.config),
            "options": self.options,
        }
        if "dead_on_data" in t:
            out["dead_on_data"] = int(t["dead_on_data"].sum())
            live = ~t["dead_on_data"]
            out["live_maps"] = int(live.sum())
            out["found_of_live"] = int((t["found"] & live).sum())
        return out


def scan_facets(result: ScanResult, threshold: float = FACET_THRESHOLD) -> list[MapFacets]:
    """`map_facets` for every map of a `ScanResult`."""
    return [map_facets(m, result.images[i], result.objective[i], threshold) for i, m in enumerate(result.map_indices)]


def facet_images(
    result: ScanResult, threshold: float = FACET_THRESHOLD
) -> list[dict[str, int | Shaped[np.ndarray, "facets ..."]]]:
    """For the gallery: per map (in `result.map_indices` order) a dict with `map`, `images` (F, 28, 28, 1)
    standardized representatives, `pixels` (same in pixel units), `objectives` (F,) and `sizes` (F,) (starts
    per facet), facets ordered by objective (the first is the map's best OIP)."""
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
