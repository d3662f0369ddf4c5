"""The study's whole search for every map of a layer: precursor scan, then the batched OIP search.

`scan_maps` returns everything as arrays and a per-map DataFrame (for notebooks);
`write_scan` writes the gallery, tables and arrays of `python -m jaxoip.scan_all_maps`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxoip._io import atomic_directory
from jaxoip.data import MNIST, Standardization
from jaxoip.errors import JaxoipError
from jaxoip.facets import FACET_THRESHOLD
from jaxoip.model import TrainedModel, get_layer, layer_shapes
from jaxoip.noise import DEFAULT_RECIPES, get_recipes, initial_images, start_keys
from jaxoip.oip import OIPConfig, OIPResult, check_target, default_chunk_size, search_oips
from jaxoip.precursor import PrecursorResult, data_activation, precursor_scan


def default_restarts() -> int:
    """16 starts per map on an accelerator; 8 on a CPU, so the default scan stays within minutes."""
    return 8 if jax.default_backend() == "cpu" else 16


@dataclasses.dataclass
class ScanResult:
    """A scan of maps `map_indices` of `layer_name` with `restarts` starts each.

    Arrays indexed [map position, start]; `table` has one row per map.
    """

    layer_name: str
    map_indices: np.ndarray  # (M,)
    restarts: int
    node: tuple[int, int] | None
    config: OIPConfig
    recipe_names: tuple[str, ...]
    start_recipe: np.ndarray  # (M, R) recipe index of every start
    oip: OIPResult  # flat over (map, start)
    precursor: PrecursorResult
    data_mean: np.ndarray | None  # (C,) objective on real images, mean over the test set
    data_max: np.ndarray | None
    standardization: Standardization
    seed: int
    screen: int = 1
    seconds: float = 0.0
    search_seconds: float = 0.0
    options: dict = dataclasses.field(default_factory=dict)  # Command-line options, recorded in the summary.
    facet_threshold: float = FACET_THRESHOLD  # Shift-invariant correlation for two starts to share a facet.

    def _per_map(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(len(self.map_indices), self.restarts, *a.shape[1:])

    @property
    def images(self) -> np.ndarray:
        """Final standardized images (M, R, 28, 28, 1)."""
        return self._per_map(self.oip.images)

    @property
    def objective(self) -> np.ndarray:
        return self._per_map(self.oip.objective)

    @property
    def traces(self) -> np.ndarray:
        return self._per_map(self.oip.traces)

    @property
    def best_start(self) -> np.ndarray:
        return np.argmax(self.objective, axis=1)

    @property
    def best_images(self) -> np.ndarray:
        """The best start's image per map, standardized (M, 28, 28, 1)."""
        return self.images[np.arange(len(self.map_indices)), self.best_start]

    @property
    def found(self) -> np.ndarray:
        """Maps for which some start reached a positive objective."""
        return self.objective.max(axis=1) > 0

    @property
    def woken(self) -> np.ndarray:
        """(M, R): starts that ascended the pre-activation at some step (`OIPConfig.wake`)."""
        w = self.oip.woken if self.oip.woken is not None else np.zeros(self.oip.objective.shape, bool)
        return self._per_map(w)

    @property
    def method(self) -> np.ndarray:
        """Per map, how its best OIP was reached: `direct`, `woken` (after ascending the pre-activation) or `none`."""
        m = np.arange(len(self.map_indices))
        woke = self.woken[m, self.best_start]
        return np.where(~self.found, "none", np.where(woke, "woken", "direct"))

    def facets(self, threshold: float | None = None):
        """Each map's starts grouped into facets (`jaxoip.facets.map_facets`)."""
        from jaxoip.facets import scan_facets

        return scan_facets(self, self.facet_threshold if threshold is None else threshold)

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


def scan_maps(
    trained: TrainedModel,
    layer_name: str = "Conv2D_3",
    map_indices=None,
    restarts: int | None = None,
    config: OIPConfig = OIPConfig(),
    recipes=DEFAULT_RECIPES,
    precursor_starts: int = 64,
    screen: int = 8,
    seed: int = 0,
    node: tuple[int, int] | None = None,
    data: MNIST | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> ScanResult:
    """Precursor scan of all maps of the layer, then the OIP search for the chosen maps from their best recipe.

    A map that some recipe activates gets all its starts from that recipe; a map silent on all recipes
    gets its starts from the recipes in turn. Each start is the most active of `screen` candidates
    drawn that way (forward passes only), so maps that few random images wake still get live starts.
    `data` adds each map's activation on the test images.
    """
    t0 = time.perf_counter()
    recipes = get_recipes(recipes)
    get_layer(trained.config, layer_name, ("conv", "pool", "dense"))
    n_maps = len(config.weighted) or layer_shapes(trained.config)[layer_name][-1]
    maps = np.arange(n_maps) if map_indices is None else np.asarray(map_indices, np.int32).reshape(-1)
    check_target(trained.config, layer_name, maps, node, config)
    restarts = restarts or default_restarts()
    if restarts < 1:
        raise JaxoipError("restarts must be at least 1")
    if config.diversity > 0:
        # A map's starts must share a chunk: groups of `restarts` consecutive images.
        if restarts < 2:
            raise JaxoipError("diversity needs at least 2 starts per map")
        config = dataclasses.replace(config, diversity_group=restarts)
        unit = math.lcm(restarts, len(jax.devices()))
        chunk_size = max(1, round((chunk_size or default_chunk_size()) / unit)) * unit
    precursor_key, oip_key = jax.random.split(jax.random.key(seed))

    pre = precursor_scan(trained.model, layer_name, recipes, precursor_starts, precursor_key, node, config)
    data_mean = data_max = None
    if data is not None:
        acts = data_activation(trained.model, trained.standardization(data.test_images), layer_name, node, config)
        data_mean, data_max = acts.mean(axis=0), acts.max(axis=0)

    if screen < 1:
        raise JaxoipError("screen must be at least 1")
    start_recipe, x0 = screened_starts(trained, layer_name, maps, restarts, screen, recipes, pre, oip_key, node, config)
    res = search_oips(
        trained.model, layer_name, np.repeat(maps, restarts), x0, config, node, chunk_size, progress
    )
    return ScanResult(
        layer_name=layer_name,
        map_indices=maps,
        restarts=restarts,
        node=node,
        config=config,
        recipe_names=tuple(r.name for r in recipes),
        start_recipe=start_recipe,
        oip=res,
        precursor=pre,
        data_mean=data_mean,
        data_max=data_max,
        standardization=trained.standardization,
        seed=seed,
        screen=screen,
        seconds=time.perf_counter() - t0,
        search_seconds=res.seconds,
    )


def screened_starts(trained, layer_name, maps, restarts, screen, recipes, pre, key, node=None, cfg=None):
    """Start images (M * R, 28, 28, 1) and their recipe indices (M, R).

    Candidate c of map m comes from fold_in(fold_in(key, m), c), with the map's best recipe (or the
    recipes in turn for a silent map); each group of `screen` candidates gives its most active one.
    """
    n_cand = restarts * screen
    cycle = np.arange(n_cand) % len(recipes)
    silent = pre.silent_on_noise[maps]
    cand_recipe = np.where(silent[:, None], cycle[None, :], pre.best_recipe[maps][:, None]).astype(np.int32)
    x = initial_images(start_keys(key, maps, n_cand).reshape(-1), recipes, jnp.asarray(cand_recipe.reshape(-1)))
    if screen == 1:
        return cand_recipe, x
    obj = data_activation(trained.model, x, layer_name, node, cfg)  # (M * n_cand, C), forward only
    obj = obj[np.arange(len(obj)), np.repeat(maps, n_cand)].reshape(len(maps), restarts, screen)
    # Within each group, the most active candidate; the first one when none is active.
    pick = np.argmax(obj, axis=2)
    flat = (np.arange(len(maps))[:, None] * n_cand + np.arange(restarts)[None, :] * screen + pick).reshape(-1)
    cand_recipe = cand_recipe.reshape(len(maps), restarts, screen)
    return np.take_along_axis(cand_recipe, pick[..., None], axis=2)[..., 0], x[flat]


def write_scan(
    result: ScanResult,
    out: str | os.PathLike,
    snapshot_maps=None,
    all_starts: bool = False,
    exemplars=None,
) -> Path:
    """Writes gallery.png, maps.csv, maps.json, summary.json, oips.npz and snapshot strips into `out`.

    Everything is written to a temporary folder first and renamed into place at the end, so an
    interrupted run never leaves a folder that looks complete.
    """
    from jaxoip import plots

    out = Path(out).absolute()
    with atomic_directory(out) as tmp:
        table = result.table()
        table.to_csv(tmp / "maps.csv", index=False)
        (tmp / "maps.json").write_text(table.to_json(orient="records", indent=1))
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=1))
        std = result.standardization
        arrays = {
            "map_indices": result.map_indices,
            "best_images": result.best_images,
            "best_pixels": std.to_pixels(result.best_images),
            "best_objective": result.objective.max(axis=1),
            "traces_best": result.traces[np.arange(len(result.map_indices)), result.best_start],
            "woken": result.woken,
            "facet_labels": np.stack([f.labels for f in result.facets()]),
        }
        if all_starts:
            arrays.update(images=result.images, pixels=std.to_pixels(result.images), objective=result.objective)
        np.savez_compressed(tmp / "oips.npz", **arrays)
        plots.oip_gallery(result, tmp / "gallery.png", exemplars=exemplars)
        for m in snapshot_maps if snapshot_maps is not None else []:
            plots.snapshot_strip(result, int(m), tmp / f"snapshots_map{int(m):03d}.png")
    return out
