"""The study's whole search for every map of a layer: precursor scan, screened starts, then the OIP search.

`scan_layer` runs a plan (`jaxoip.oip.plan.plan_scan`); `scan_maps` plans and runs in one call. Both return a
`ScanResult` (`jaxoip.oip.scan_result`: arrays and a per-map DataFrame, for notebooks); the search runs in
saved groups (`jaxoip.oip.groups`) so that a killed scan resumes. `write_scan` writes the gallery, tables and
arrays of a result (`jaxoip.jobs.run_scan` adds the site).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int

from jaxoip._check import check_type
from jaxoip._io import prepare_output
from jaxoip._prefetch import prefetch_imports
from jaxoip.analysis.exemplars import Exemplars, exemplars_from_maxima, find_exemplars
from jaxoip.data.mnist import MNIST
from jaxoip.models.cnn import TrainedModel, batched_layer_map
from jaxoip.oip import quality as quality_lib
from jaxoip.oip.config import ObjectiveConfig, Terms
from jaxoip.oip.facets import FACET_THRESHOLD
from jaxoip.oip.groups import search_in_groups
from jaxoip.oip.noise import DEFAULT_RECIPES, Recipe, seeded_starts
from jaxoip.oip.param import maco_magnitude
from jaxoip.oip.plan import ScanPlan, plan_scan
from jaxoip.oip.precursor import MapMeansAndMaxima, PrecursorResult, objective_values, run_precursor
from jaxoip.oip.scan_result import ScanResult, facet_images, objective_histograms
from jaxoip.oip.search import OIPConfig
from jaxoip.oip.two_choice import QualityConfig
from jaxoip.progress import Progress
from jaxoip.shapes import MapIndices

SEARCH_STREAM = 1  # fold_in(key(seed), stream): the search's starts, apart from the precursor's draws.


def scan_maps(
    trained: TrainedModel,
    layer_name: str = "Conv2D_3",
    map_indices: MapIndices | None = None,
    restarts: int | None = None,
    config: OIPConfig = OIPConfig(),
    recipes: Sequence[str | Recipe] = DEFAULT_RECIPES,
    precursor_starts: int = 64,
    screen: int = 8,
    seed: int = 0,
    node: tuple[int, int] | None = None,
    data: MNIST | None = None,
    chunk_size: int | None = None,
    progress: bool | Progress = True,
    partial_dir: str | os.PathLike | None = None,
    quality: QualityConfig | None = QualityConfig(),
    facet_threshold: float = FACET_THRESHOLD,
    exemplars: int = 0,
    options: ObjectiveConfig | None = None,
    weighted: tuple[Terms, ...] = (),
) -> ScanResult:
    """Precursor scan of all maps of the layer, then the OIP search for the chosen maps from their best recipe:
    `scan_layer(plan_scan(...), data, progress, partial_dir)`.

    A map that some recipe activates gets all its starts from that recipe; a map silent on all recipes
    gets its starts from the recipes in turn. Each start is the most active of `screen` candidates
    drawn that way (forward passes only), so maps that few random images wake still get live starts.
    `layer_name` may be an `Objective` (`jaxoip.oip.objectives`); else `options` (quantity, wake-up,
    selectivity) and `weighted` (sums of units; target i is sum i) say what is ascended.
    `data` adds each map's activation on the test images; the selective objective (`options.selective`)
    normalizes by its maxima and MACO (`config.param` maco) takes its magnitude from the mean amplitude
    spectrum of the training images, so both need `data`. Every compiled pass runs at
    `config.precision`. `progress`: True (default) for one progress display in image-steps of the search,
    the phase as its description, False for none, or a `jaxoip.progress.Progress` to report into. With
    `partial_dir`, every finished group of chunks of the search is kept there, and a repeated call skips
    them (same result as without a break); `seconds` and `search_seconds` are then this call's, and
    `earlier_search_seconds` the search time the earlier calls spent on the groups reused. `quality`: the
    per-map measures (`jaxoip.oip.quality`; those beyond `stability` need `data`), None for none.
    `facet_threshold`: the shift-invariant correlation for two starts to share a facet (the facets the
    table shows, and the OIP references of the two-choice task). `exemplars` > 0: with `data`, the result's
    `exemplars` are that many test images per map that drive it hardest (`find_exemplars`; a map layer's
    maps, no node, no weighted targets), found in the data pass where the target is the map's activation.
    """
    plan = plan_scan(
        trained,
        layer_name,
        map_indices,
        restarts,
        config,
        recipes,
        precursor_starts,
        screen,
        seed,
        node,
        chunk_size,
        quality,
        facet_threshold,
        exemplars,
        options,
        weighted,
    )
    return scan_layer(plan, data, progress, partial_dir)


def scan_layer(
    plan: ScanPlan,
    data: MNIST | None = None,
    progress: bool | Progress = True,
    partial_dir: str | os.PathLike | None = None,
) -> ScanResult:
    """Runs the scan `plan_scan` planned: precursor scan, screened starts, the search (resumable in
    `partial_dir`), then with `data` the data pass, the exemplars, the minimizing OIPs and the measures."""
    t0 = time.perf_counter()
    check_type("plan", plan, ScanPlan, " (from plan_scan)")
    plan.check_data(data)
    trained, objective, config, maps, restarts = plan.trained, plan.objective, plan.config, plan.maps, plan.restarts
    layer_name, precision = objective.layer.name, config.precision
    exemplars = plan.exemplars if data is not None else 0
    # The plain map objective: the exemplars' maxima come from the data pass (one pass over the test images).
    shared_pass = exemplars > 0 and not objective.custom
    test_x = functools.cache(lambda: trained.standardization(data.test_images))  # Standardized once (31 MB).

    own = not isinstance(progress, Progress)
    bar = Progress(bool(progress), f"scan {layer_name}", unit="image-step") if own else progress
    bar.plan(plan.image_steps)  # The search's image-steps: a total from the first phase on.
    try:
        with bar.phase("precursor scan"):
            root = np.uint32(plan.seed)
            pre = run_precursor(trained.model, objective, plan.recipes, plan.precursor_starts, root, precision)
        selective_max = magnitude = None
        if objective.selective > 0:  # The selective objective normalizes by the maps' maxima over the test images.
            with bar.phase("data maxima"):
                selective_max = objective_values(trained.model, test_x(), objective, precision, cache=True).max(axis=0)
        if config.param == "maco":
            with bar.phase("maco spectrum"):
                magnitude = maco_magnitude(trained.standardization(data.train_images))
        with bar.phase("screening starts"):
            start_recipe, x0 = screened_starts(plan, pre)
        # The writers' imports on a thread of their own, while this one waits for XLA's search (and later passes):
        # against starting them at the data pass, which the pass cache shortens, 5.92 -> 5.78 s warm.
        prefetch_imports()
        res, earlier_seconds = search_in_groups(
            trained.model,
            objective,
            np.repeat(maps, restarts),
            x0,
            config,
            plan.chunk,
            bar,
            partial_dir,
            selective_max,
            magnitude,
            plan.setup,
        )
        data_mean = data_max = acts = on_best = on_clipped = minimizing = histogram = found = None
        if data is not None:
            with bar.phase("data pass"):
                x = test_x()
                obj = res.objective.reshape(len(maps), restarts)
                best = res.images.reshape(len(maps), restarts, *x.shape[1:])[np.arange(len(maps)), obj.argmax(1)]
                # The best OIPs, as searched and clipped to pixels [0, 255] (superstimulus is measured on
                # the latter), in full batches of their own: a map's value on its OIP depends neither on how
                # many maps the scan holds nor on whether the test images' pass was run or read back from
                # the pass cache (it does not depend on the search: a second scan of the layer reads it).
                oips = np.concatenate([best, quality_lib.clip_to_pixels(best, trained.standardization)])
                if shared_pass:
                    layer, means = objective.layer, {"fn": MapMeansAndMaxima(), "precision": precision, "pad": True}
                    acts, top, where = batched_layer_map(trained.model, x, layer, **means, cache=True)
                    found = exemplars_from_maxima(trained, data.test_images, layer, exemplars, "test", top, where)
                    on_oips = batched_layer_map(trained.model, oips, layer, **means)[0]
                else:
                    acts = objective_values(trained.model, x, objective, precision, pad=True, cache=True)
                    on_oips = objective_values(trained.model, oips, objective, precision, pad=True)
                on_best, on_clipped = on_oips[: len(best)], on_oips[len(best) :]
                data_mean, data_max = acts.mean(axis=0), acts.max(axis=0)
                histogram = objective_histograms(acts)  # For the site's map pages: no second pass.
            if exemplars > 0 and not shared_pass:
                with bar.phase("exemplars"):
                    found = find_exemplars(trained, data, objective.layer, k=exemplars, precision=precision)
            if plan.quality is not None and plan.quality.min_starts > 0:
                with bar.phase("minimizing OIPs"):
                    minimizing = quality_lib.minimizing_oips(
                        trained.model,
                        objective,
                        maps,
                        x0,
                        restarts,
                        config,
                        plan.quality.min_starts,
                        plan.chunk,
                        magnitude,
                        plan.setup,
                    )
    finally:
        if own:
            bar.close()
    result = ScanResult(
        layer_name=layer_name,
        map_indices=maps,
        restarts=restarts,
        node=objective.node,
        config=config,
        target=objective,
        recipe_names=tuple(r.name for r in plan.recipes),
        start_recipe=start_recipe,
        oip=res,
        precursor=pre,
        data_mean=data_mean,
        data_max=data_max,
        standardization=trained.standardization,
        seed=plan.seed,
        screen=plan.screen,
        seconds=time.perf_counter() - t0,
        search_seconds=res.seconds,
        earlier_search_seconds=earlier_seconds,
        facet_threshold=plan.facet_threshold,
        data_histogram=histogram,
        can_be_dead=objective.can_be_dead,
        data_source=None if data is None else data.source,
        exemplars=found,
    )
    if plan.quality is not None:
        x = None if data is None else test_x()
        min_images, min_objective = minimizing if minimizing is not None else (None, None)
        result.quality = quality_lib.measure(result, plan.quality, x, acts, on_best, min_images, on_clipped)
        result.quality.min_images, result.quality.min_objective = min_images, min_objective
    return result


def screened_starts(
    plan: ScanPlan, pre: PrecursorResult
) -> tuple[Int[np.ndarray, "m r"], Float[np.ndarray, "m*r H W ch"]]:
    """Each start's recipe index and the start images, the `r` starts of a map in a row.

    Candidate c of map m comes from fold_in(fold_in(fold_in(key(seed), SEARCH_STREAM), m), c), with the
    map's best recipe (or the recipes in turn for a silent map); each group of `screen` candidates gives
    its most active one.
    """
    maps, restarts, screen, recipes = plan.maps, plan.restarts, plan.screen, plan.recipes
    n_cand = restarts * screen
    cycle = np.arange(n_cand) % len(recipes)
    silent = pre.silent_on_noise[maps]
    cand_recipe = np.where(silent[:, None], cycle[None, :], pre.best_recipe[maps][:, None]).astype(np.int32)
    shape = tuple(plan.trained.config.input_shape)
    x = seeded_starts(plan.seed, SEARCH_STREAM, maps, n_cand, recipes, cand_recipe.reshape(-1), shape)
    if screen == 1:
        return cand_recipe, x
    # (M * n_cand, C), forward only
    obj = objective_values(plan.trained.model, x, plan.objective, plan.config.precision, pad=True)
    obj = obj[np.arange(len(obj)), np.repeat(maps, n_cand)].reshape(len(maps), restarts, screen)
    # Within each group, the most active candidate; the first one when none is active.
    pick = np.argmax(obj, axis=2)
    flat = (np.arange(len(maps))[:, None] * n_cand + np.arange(restarts)[None, :] * screen + pick).reshape(-1)
    cand_recipe = cand_recipe.reshape(len(maps), restarts, screen)
    return np.take_along_axis(cand_recipe, pick[..., None], axis=2)[..., 0], x[flat]


def write_scan(
    result: ScanResult,
    out: str | os.PathLike,
    snapshot_maps: Iterable[int] | None = None,
    all_starts: bool = False,
    exemplars: Exemplars | dict[int, list] | None = None,
    extra_summary: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the scan into the new or empty folder `out` (see `write_scan_files`), by the rules of
    `jaxoip._io.prepare_output`."""
    check_type("result", result, ScanResult, " (from scan_maps)")
    with prepare_output(out, "write_scan", {}, overwrite=overwrite) as o:
        write_scan_files(result, o.staging, snapshot_maps, all_starts, exemplars, extra_summary)
    return o.path


def write_scan_files(
    result: ScanResult,
    folder: str | os.PathLike,
    snapshot_maps: Iterable[int] | None = None,
    all_starts: bool = False,
    exemplars: Exemplars | dict[int, list] | None = None,
    extra_summary: dict | None = None,
):
    """Writes gallery.png, maps.csv, maps.json, summary.json, oips.npz (with the minimizing OIPs when
    measured), two_choice.npz (when the two-choice task ran) and snapshot strips into `folder`.

    `exemplars`: `find_exemplars`' result for the scan's layer, or its patches by map index, for the gallery.
    """
    from jaxoip.oip import figures

    if isinstance(exemplars, Exemplars):
        exemplars = {int(m): exemplars.patches[m] for m in result.map_indices}
    tmp = Path(folder)
    table = result.table()
    table.to_csv(tmp / "maps.csv", index=False)
    (tmp / "maps.json").write_text(table.to_json(orient="records", indent=1))
    summary = result.summary(table).to_dict()
    (tmp / "summary.json").write_text(json.dumps({**summary, **(extra_summary or {})}, indent=1))
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
    q = result.quality
    if q is not None and q.min_images is not None:
        arrays.update(min_images=q.min_images, min_objective=q.min_objective)
    np.savez_compressed(tmp / "oips.npz", **arrays)
    if q is not None and q.trials:  # Every two-choice trial's queries and references, to rerun the task.
        np.savez_compressed(tmp / "two_choice.npz", **q.trials)
    facets = [f["images"] for f in facet_images(result, result.facet_threshold)] if result.restarts > 1 else None
    figures.oip_gallery(result, tmp / "gallery.png", exemplars=exemplars, facets=facets)
    figures.write_snapshot_strips(result, [] if snapshot_maps is None else list(snapshot_maps), tmp)
