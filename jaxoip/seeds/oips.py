"""The OIP part of the seed comparison: OIPs of matched maps, from one search function, and their similarity.

`map_oips` is the one place where the comparison gets its OIPs. `CompareConfig.oip_source` picks the
search: "scan" (default) is `scan.scan_maps`, the improved search (each map's best noise recipe from the
precursor scan, every start screened from several candidates), with `CompareConfig.oip_scan_options`
passed on to it as keyword arguments (for options the scan gains, such as waking silent maps);
"shared" is the plain search of `oip.search_oips` from the same `oip_restarts` starts for every map
and model (the study's recipe), which adds the same-start pixel similarity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import TrainedModel
from jaxoip.numerics import DEFAULT_PRECISION, Precision
from jaxoip.oip.noise import initial_images
from jaxoip.oip.precursor import data_activation
from jaxoip.oip.scan import scan_maps
from jaxoip.oip.search import search_oips
from jaxoip.oip.similarity import cross_activation, masked_mean, oip_similarities, select_oip_maps
from jaxoip.seeds.config import OIP_SOURCES, CompareConfig


@dataclasses.dataclass
class MapOIPs:
    """OIPs of some maps of one model: images standardized (maps, restarts, H, W, 1)."""

    maps: np.ndarray  # (M,)
    images: np.ndarray
    objective: np.ndarray  # (M, R) after the last step
    live: np.ndarray  # (M, R) the start woke the map: its objective left zero and ended above it


def map_oips(trained: TrainedModel, layer_name: str, maps, config: CompareConfig, progress: bool = False) -> MapOIPs:
    """OIPs of `maps` of `layer_name`, `config.oip_restarts` starts each, from the search `config.oip_source`.

    The starts depend on `config.seed` and the map index only, so every model is searched from the same
    starts ("shared") or the same candidate starts ("scan").
    """
    maps = np.asarray(maps, np.int32).reshape(-1)
    r = config.oip_restarts
    if config.oip_source == "shared":
        key = jax.random.fold_in(jax.random.key(config.seed), 1)
        shape = tuple(trained.config.input_shape)
        starts = np.asarray(initial_images(jax.random.split(key, r), [config.oip_recipe], shape=shape))
        res = search_oips(
            trained.model,
            layer_name,
            np.repeat(maps, r),
            np.tile(starts, (len(maps), 1, 1, 1)),
            config.oip,
            progress=progress,
            options=config.oip_objective,
        )
        images, objective, stayed_zero = res.images, res.objective, res.stayed_zero
    elif config.oip_source == "scan":
        res = scan_maps(
            trained,
            layer_name,
            maps,
            restarts=r,
            config=config.oip,
            seed=config.seed,
            progress=progress,
            options=config.oip_objective,
            **dict(config.oip_scan_options),
        )
        images, objective, stayed_zero = res.oip.images, res.oip.objective, res.oip.stayed_zero
    else:
        raise JaxoipError(f"unknown OIP source {config.oip_source!r}; choose from {', '.join(OIP_SOURCES)}")
    m = len(maps)
    objective = np.asarray(objective).reshape(m, r)
    live = ~np.asarray(stayed_zero).reshape(m, r) & (objective > 0)
    return MapOIPs(
        maps=maps, images=np.asarray(images).reshape(m, r, *images.shape[1:]), objective=objective, live=live
    )


def responses(
    trained: TrainedModel, layer_name: str, images: np.ndarray, precision: Precision = DEFAULT_PRECISION
) -> np.ndarray:
    """The search's objective (mean of each map) of every map of `layer_name` for standardized images: (N, C)."""
    return data_activation(trained.model, images, layer_name, precision=precision)


def pair_oip_measures(
    model_a: TrainedModel,
    model_b: TrainedModel,
    layer_name: str,
    oips_a: MapOIPs,
    oips_b: MapOIPs,
    max_shift: int,
    precision: Precision = DEFAULT_PRECISION,
) -> dict[str, np.ndarray]:
    """Every OIP measure of one pair, per matched map: map i of `oips_a` is matched to map i of `oips_b`."""
    m, r = oips_a.live.shape
    out = oip_similarities(oips_a.images, oips_b.images, oips_a.live, oips_b.live, max_shift)
    flat_a = oips_a.images.reshape(m * r, *oips_a.images.shape[2:])
    flat_b = oips_b.images.reshape(m * r, *oips_b.images.shape[2:])
    act_b = responses(model_b, layer_name, np.concatenate([flat_a, flat_b]), precision)  # b's maps on a's and own OIPs
    act_a = responses(model_a, layer_name, np.concatenate([flat_b, flat_a]), precision)
    ab = cross_activation(
        act_b[: m * r].reshape(m, r, -1)[:, :, oips_b.maps],
        act_b[m * r :].reshape(m, r, -1)[np.arange(m), :, oips_b.maps],
        oips_a.live,
        oips_b.live,
    )
    ba = cross_activation(
        act_a[: m * r].reshape(m, r, -1)[:, :, oips_a.maps],
        act_a[m * r :].reshape(m, r, -1)[np.arange(m), :, oips_a.maps],
        oips_b.live,
        oips_a.live,
    )

    def both(x, y):
        s = np.stack([x, y])
        return masked_mean(np.nan_to_num(s), ~np.isnan(s), axis=0)

    out["xact_ab"], out["xact_ba"] = ab["cross"], ba["cross"]
    out["xact"] = both(ab["cross"], ba["cross"])
    out["xact_ceiling"] = both(ab["ceiling"], ba["ceiling"])
    out["xact_floor"] = both(ab["floor"], ba["floor"])
    out["silent_starts_a"], out["silent_starts_b"] = (~oips_a.live).sum(1), (~oips_b.live).sum(1)
    out["both_live"] = (oips_a.live.sum(1) > 0) & (oips_b.live.sum(1) > 0)
    return out


def compare_oips(
    models: Sequence[TrainedModel], pairs, details: dict, config: CompareConfig, progress: bool = False
) -> tuple[dict, dict[int, MapOIPs]]:
    """OIP measures of `config.oip_maps` matched maps of every pair of `config.oip_layer`.

    Each model's maps needed by any pair are searched once.
    Returns (per pair: matched maps, their correlation and every measure per map; per model its OIPs).
    """
    layer = config.oip_layer
    chosen = {}
    for a, b in pairs:
        d = details[(layer, "real", (a, b))]
        sel = select_oip_maps(d, config.oip_maps)
        chosen[(a, b)] = (d["a"][sel], d["b"][sel], d["corr"][sel])
    needed = {i: set() for i in range(len(models))}
    for (a, b), (ma, mb, _) in chosen.items():
        needed[a].update(int(x) for x in ma)
        needed[b].update(int(x) for x in mb)
    searched = {i: map_oips(models[i], layer, sorted(maps), config, progress) for i, maps in needed.items() if maps}

    def subset(i, maps):
        s = searched[i]
        pos = np.searchsorted(s.maps, maps)
        return MapOIPs(maps=np.asarray(maps), images=s.images[pos], objective=s.objective[pos], live=s.live[pos])

    out = {}
    for (a, b), (ma, mb, corr) in chosen.items():
        oa, ob = subset(a, ma), subset(b, mb)
        measures = pair_oip_measures(models[a], models[b], layer, oa, ob, config.oip_max_shift, config.oip.precision)
        if config.oip_source != "shared":
            measures.pop("pixel_same_start")
        out[(a, b)] = dict(maps_a=ma, maps_b=mb, corr=corr, **measures)
    return out, searched


def oip_pair_metrics(o: dict) -> dict[str, float]:
    """One pair's OIP figures: each measure's mean over matched maps with live starts on both sides
    (a measure that no map defines is left out), the fraction of such maps, and the silent starts left out."""
    both = np.asarray(o["both_live"], bool)
    out = {}
    for k, v in o.items():
        if k in ("maps_a", "maps_b", "corr", "both_live", "silent_starts_a", "silent_starts_b"):
            continue
        v = np.asarray(v, np.float64)[both]
        v = v[np.isfinite(v)]
        if v.size:
            out[f"oip_{k}"] = float(v.mean())
    out["oip_both_live"] = float(both.mean())
    out["oip_silent_starts"] = float(np.sum(o["silent_starts_a"]) + np.sum(o["silent_starts_b"]))
    return out
