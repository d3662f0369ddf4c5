"""The study's whole search for every map of a layer: precursor scan, then the batched OIP search.

`scan_maps` returns everything as arrays and a per-map DataFrame (for notebooks);
`write_scan` writes the gallery, tables and arrays of `python -m jaxoip.scan_all_maps`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxoip._check import check_int
from jaxoip._io import prepare_output
from jaxoip._memory import check_fits
from jaxoip.data import MNIST, Standardization
from jaxoip.errors import JaxoipError
from jaxoip.facets import FACET_THRESHOLD
from jaxoip.model import TrainedModel, get_layer, layer_shapes
from jaxoip.noise import DEFAULT_RECIPES, get_recipes, seeded_starts
from jaxoip.numerics import check_seed
from jaxoip.oip import OIPConfig, OIPResult, check_target, default_chunk_size, search_oips
from jaxoip.precursor import PrecursorResult, data_activation, precursor_scan
from jaxoip.progress import Progress, as_progress


def default_restarts() -> int:
    """16 starts per map on an accelerator; 8 on a CPU, so the default scan stays within minutes."""
    return 8 if jax.default_backend() == "cpu" else 16


# Chunks per saved group of a resumable search: a kill loses at most this many chunks of work.
GROUP_CHUNKS = 8


def check_scan_args(restarts=None, precursor_starts=64, screen=8, seed=0, chunk_size=None):
    """The scan's numeric arguments, checked before anything is loaded or compiled."""
    check_int("restarts", restarts, 1, optional=True)
    check_int("precursor starts", precursor_starts, 1)
    check_int("screen", screen, 1)
    check_int("seed", seed)
    check_int("chunk size", chunk_size, 1, optional=True)


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
    _facets: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

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


SEARCH_STREAM = 1  # fold_in(key(seed), stream): the search's starts, apart from the precursor's draws.


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
    progress=True,
    partial_dir: str | os.PathLike | None = None,
) -> ScanResult:
    """Precursor scan of all maps of the layer, then the OIP search for the chosen maps from their best recipe.

    A map that some recipe activates gets all its starts from that recipe; a map silent on all recipes
    gets its starts from the recipes in turn. Each start is the most active of `screen` candidates
    drawn that way (forward passes only), so maps that few random images wake still get live starts.
    `data` adds each map's activation on the test images. Every compiled pass runs at
    `config.precision`. `progress`: True (default) for one progress display over all phases, False for
    none, or a `jaxoip.progress.Progress` to report into. With `partial_dir`, every finished group of
    chunks of the search is kept there, and a repeated call skips them (same result as without a break).
    """
    t0 = time.perf_counter()
    check_scan_args(restarts, precursor_starts, screen, seed, chunk_size)
    recipes = get_recipes(recipes)
    get_layer(trained.config, layer_name, ("conv", "pool", "dense"))
    n_maps = len(config.weighted) or layer_shapes(trained.config)[layer_name][-1]
    maps = np.arange(n_maps) if map_indices is None else np.asarray(map_indices).reshape(-1)
    check_target(trained.config, layer_name, maps, node, config)
    restarts = default_restarts() if restarts is None else int(restarts)
    seed = check_seed(seed)
    maps = maps.astype(np.int32)
    chunk = min(chunk_size or default_chunk_size(), len(maps) * restarts)
    if config.diversity > 0:
        # A map's starts must share a chunk: groups of `restarts` consecutive images.
        if restarts < 2:
            raise JaxoipError("diversity needs at least 2 starts per map")
        config = dataclasses.replace(config, diversity_group=restarts)
        unit = math.lcm(restarts, len(jax.devices()))
        chunk = max(1, round(chunk / unit)) * unit
    check_fits(trained.config, chunk, "an OIP search chunk", "--chunk-size")

    own = not isinstance(progress, Progress)
    bar = Progress(bool(progress), f"scan {layer_name}") if own else progress
    try:
        with bar.phase("precursor scan"):
            pre = precursor_scan(
                trained.model, layer_name, recipes, precursor_starts, seed, node, config.precision, config
            )
        data_mean = data_max = None
        if data is not None:
            with bar.phase("data pass"):
                x = trained.standardization(data.test_images)
                acts = data_activation(trained.model, x, layer_name, node, cfg=config)
                data_mean, data_max = acts.mean(axis=0), acts.max(axis=0)
        with bar.phase("screening starts"):
            start_recipe, x0 = screened_starts(
                trained, layer_name, maps, restarts, screen, recipes, pre, seed, node, config
            )
        res = search_in_groups(
            trained.model, layer_name, np.repeat(maps, restarts), x0, config, node, chunk, bar, partial_dir
        )
    finally:
        if own:
            bar.close()
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


def _group_key(model, layer_name, maps, x0, config: OIPConfig, node, chunk: int) -> str:
    """What a saved group's results depend on: the model, the target, the start images and the search."""
    from flax import nnx

    from jaxoip.checkpoint import params_checksum

    h = hashlib.sha256()
    h.update(params_checksum(nnx.to_pure_dict(nnx.state(model, nnx.Param))).encode())
    h.update(repr((layer_name, node, config, chunk, jax.default_backend())).encode())
    h.update(np.ascontiguousarray(maps, np.int32).tobytes())
    h.update(np.ascontiguousarray(x0, np.float32).tobytes())
    return h.hexdigest()


_RESULT_ARRAYS = ("images", "objective", "traces", "snapshots", "converged_step", "stayed_zero", "woken")


def _load_group(path: Path | None, key: str | None) -> dict | None:
    """A finished group saved by an earlier (killed) run, if it matches `key`; None otherwise."""
    if path is None or not path.exists():
        return None
    try:
        with np.load(path) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in (*_RESULT_ARRAYS, "steps_run", "seconds")}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # A damaged group is searched again.


def search_in_groups(
    model, layer_name, maps, x0, config, node, chunk: int, progress=False, partial_dir=None
) -> OIPResult:
    """`search_oips` over fixed groups of `GROUP_CHUNKS` whole chunks; groups already in `partial_dir` are reused.

    The grouping does not depend on `partial_dir`, so a resumed search equals an uninterrupted one bit for bit.
    `seconds` sums the search time of every group, measured when it was searched (in this run or the killed one).
    """
    n = len(maps)
    size = chunk * GROUP_CHUNKS
    partial = Path(partial_dir) if partial_dir is not None else None
    if partial is not None:
        partial.mkdir(parents=True, exist_ok=True)
    parts = []
    with as_progress(progress, total=-(-n // size), desc=f"OIP search {layer_name}", unit="group") as bar:
        for g, lo in enumerate(range(0, n, size)):
            hi = min(lo + size, n)
            key = _group_key(model, layer_name, maps[lo:hi], x0[lo:hi], config, node, chunk) if partial else None
            path = partial / f"group_{g:05d}.npz" if partial else None
            part = _load_group(path, key)
            if part is None:
                res = search_oips(model, layer_name, maps[lo:hi], x0[lo:hi], config, node, chunk, False)
                part = {k: getattr(res, k) for k in _RESULT_ARRAYS}
                part.update(steps_run=res.steps_run, seconds=res.seconds)
                if path is not None:
                    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
                    np.savez(tmp, key=key, **part)
                    os.replace(tmp, path)
            parts.append(part)
            bar.update(1)
    res = {k: np.concatenate([p[k] for p in parts]) for k in _RESULT_ARRAYS}
    steps_run = max(int(p["steps_run"]) for p in parts)
    seconds = sum(float(p["seconds"]) for p in parts)
    return OIPResult(snapshot_steps=config.snapshots, seconds=seconds, steps_run=steps_run, **res)


def screened_starts(trained, layer_name, maps, restarts, screen, recipes, pre, seed: int, node=None, cfg=None):
    """Start images (M * R, 28, 28, 1) and their recipe indices (M, R).

    Candidate c of map m comes from fold_in(fold_in(fold_in(key(seed), SEARCH_STREAM), m), c), with the
    map's best recipe (or the recipes in turn for a silent map); each group of `screen` candidates gives
    its most active one.
    """
    n_cand = restarts * screen
    cycle = np.arange(n_cand) % len(recipes)
    silent = pre.silent_on_noise[maps]
    cand_recipe = np.where(silent[:, None], cycle[None, :], pre.best_recipe[maps][:, None]).astype(np.int32)
    x = seeded_starts(seed, SEARCH_STREAM, maps, n_cand, recipes, cand_recipe.reshape(-1))
    if screen == 1:
        return cand_recipe, x
    obj = data_activation(trained.model, x, layer_name, node, cfg=cfg)  # (M * n_cand, C), forward only
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
    extra_summary: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the scan into the new or empty folder `out` (see `write_scan_files`), by the rules of
    `jaxoip._io.prepare_output`."""
    with prepare_output(out, "write_scan", {}, overwrite=overwrite) as o:
        write_scan_files(result, o.staging, snapshot_maps, all_starts, exemplars, extra_summary)
    return o.path


def write_scan_files(
    result: ScanResult,
    folder: str | os.PathLike,
    snapshot_maps=None,
    all_starts: bool = False,
    exemplars=None,
    extra_summary: dict | None = None,
):
    """Writes gallery.png, maps.csv, maps.json, summary.json, oips.npz and snapshot strips into `folder`."""
    from jaxoip import plots

    tmp = Path(folder)
    table = result.table()
    table.to_csv(tmp / "maps.csv", index=False)
    (tmp / "maps.json").write_text(table.to_json(orient="records", indent=1))
    (tmp / "summary.json").write_text(json.dumps({**result.summary(), **(extra_summary or {})}, indent=1))
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
    from jaxoip.facets import facet_images

    facets = [f["images"] for f in facet_images(result, result.facet_threshold)] if result.restarts > 1 else None
    plots.oip_gallery(result, tmp / "gallery.png", exemplars=exemplars, facets=facets)
    for m in snapshot_maps if snapshot_maps is not None else []:
        plots.snapshot_strip(result, int(m), tmp / f"snapshots_map{int(m):03d}.png")
