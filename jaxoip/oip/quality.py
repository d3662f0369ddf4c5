"""How far each map's OIP can be trusted: per-map measures that every scan computes.

- `out_of_range_frac`: the share of the best OIP's pixels that no 8-bit image holds (below -0.5 or above
  255.5 after mapping back to pixels); 0 with `OIPConfig.pixel_range` clip or sigmoid.
- `superstimulus`: the map's value on its best OIP *clipped to pixels [0, 255]* over its largest value on
  the test images (how much harder a real image like the OIP drives it than any real digit);
  `superstimulus_raw` the same on the OIP as searched. Empty for maps dead on data (largest value <= 0).
- `selectivity_rank`, `selectivity_ratio`: on a map's best OIP (as searched), every map of the layer (every
  target, for weighted sums) is normalized by its own largest value on the test images; the rank of the
  target among them (0: the OIP drives its own map hardest) and its normalized value over the largest other
  one (> 1: the OIP is selective; inf when no other map responds). Maps dead on data take no part.
- `stability`: the mean shift-invariant similarity (`jaxoip.oip.facets.shift_similarity`, the facets'
  measure) over pairs of the map's live starts (positive objective); empty with fewer than two.
- `two_choice_oip`, `two_choice_exemplars` (and `_minmax`), each with its 95% Wilson interval (`_lo`,
  `_hi`): a machine version of the two-alternative task of Borowski et al. (ICLR 2021), in
  `jaxoip.oip.two_choice` with its settings (`QualityConfig`) and its design.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float, Int

from jaxoip.oip.facets import shift_similarity
from jaxoip.oip.two_choice import QualityConfig, feature_observer, oip_references, summarize_two_choice, two_choice


@dataclasses.dataclass
class MapQuality:
    """Per searched map (in `ScanResult.map_indices` order); NaN where a measure is undefined."""

    stability: Float[np.ndarray, " m"]
    out_of_range_frac: Float[np.ndarray, " m"] | None = None
    superstimulus: Float[np.ndarray, " m"] | None = None  # on the best OIP clipped to pixels [0, 255]
    superstimulus_raw: Float[np.ndarray, " m"] | None = None  # on the best OIP as searched
    selectivity_rank: Float[np.ndarray, " m"] | None = None  # integer-valued, NaN when undefined
    selectivity_ratio: Float[np.ndarray, " m"] | None = None
    two_choice: dict[str, Float[np.ndarray, " m"]] = dataclasses.field(default_factory=dict)
    controls: dict[str, Float[np.ndarray, " m"]] = dataclasses.field(default_factory=dict)  # chance-level arms
    trials: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # two_choice.npz
    min_images: Float[np.ndarray, "m q H W ch"] | None = None  # the minimizing OIPs (oips.npz)
    min_objective: Float[np.ndarray, "m q"] | None = None  # their objective: the negated pre-activation
    summary: dict = dataclasses.field(default_factory=dict)

    def columns(self) -> dict[str, np.ndarray]:
        """The table's columns, in order (only the measures computed)."""
        out = {}
        if self.out_of_range_frac is not None:
            out["out_of_range_frac"] = self.out_of_range_frac
        if self.superstimulus is not None:
            out["superstimulus"] = self.superstimulus
            out["superstimulus_raw"] = self.superstimulus_raw
            out["selectivity_rank"] = self.selectivity_rank
            out["selectivity_ratio"] = self.selectivity_ratio
        out["stability"] = self.stability
        return {**out, **self.two_choice}


def superstimulus(on_oip: Float[np.ndarray, " m"], data_max: Float[np.ndarray, " m"]) -> Float[np.ndarray, " m"]:
    """Value on the OIP over the largest value on the test images; NaN for maps dead on data."""
    live = data_max > 0
    return np.where(live, on_oip / np.where(live, data_max, 1.0), np.nan)


def selectivity(
    on_oip: Float[np.ndarray, "m k"], maps: Int[np.ndarray, " m"], data_max: Float[np.ndarray, " k"]
) -> tuple[Float[np.ndarray, " m"], Float[np.ndarray, " m"]]:
    """(rank, ratio) of each target among the layer's live units on its OIP, values normalized by their data max."""
    live = data_max > 0
    norm = np.where(live[None], on_oip / np.where(live, data_max, 1.0)[None], -np.inf)  # (m, k)
    m = np.arange(len(maps))
    own = norm[m, maps]
    others = norm.copy()
    others[m, maps] = -np.inf
    rank = (others > own[:, None]).sum(axis=1).astype(float)
    top_other = others.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(top_other > 0, own / np.where(top_other > 0, top_other, 1.0), np.inf)
    ratio = np.where(own > 0, ratio, np.where(top_other > 0, ratio, np.nan))  # 0 / 0: undefined
    undefined = ~live[maps]
    return np.where(undefined, np.nan, rank), np.where(undefined, np.nan, ratio)


def stability(images: Float[np.ndarray, "m r H W 1"], objective: Float[np.ndarray, "m r"]) -> Float[np.ndarray, " m"]:
    """Mean shift-invariant similarity over pairs of each map's live starts; NaN with fewer than two."""
    out = np.full(len(images), np.nan)
    for i in range(len(images)):
        live = np.flatnonzero(objective[i] > 0)
        if len(live) >= 2:
            s = shift_similarity(images[i][live])
            out[i] = s[~np.eye(len(live), dtype=bool)].mean()
    return out


def summarize(q: MapQuality, cfg: QualityConfig, seed: int) -> dict:
    """summary.json's aggregates: distributions of the per-map measures, two-choice means with CIs and chance.

    The two-choice part: `jaxoip.oip.two_choice.summarize_two_choice`."""

    def dist(v):
        v = np.asarray(v, float)
        f = v[np.isfinite(v)]
        if f.size == 0:
            return {"maps": 0}
        return {
            "maps": int(f.size),
            "median": round(float(np.median(f)), 4),
            "min": round(float(f.min()), 4),
            "max": round(float(f.max()), 4),
        }

    out = {"stability": dist(q.stability)}
    if q.out_of_range_frac is not None:
        out["out_of_range_frac"] = {**dist(q.out_of_range_frac), "mean": round(float(np.mean(q.out_of_range_frac)), 4)}
    if q.superstimulus is not None:
        out["superstimulus"] = dist(q.superstimulus)
        out["superstimulus_raw"] = dist(q.superstimulus_raw)
        rank = q.selectivity_rank[np.isfinite(q.selectivity_rank)]
        top = round(float(np.mean(rank == 0)), 4) if rank.size else None
        out["selectivity_rank"] = {"maps": int(rank.size), "frac_top": top}
        # inf (no other map responds) counts above every finite ratio in the median.
        ratio = q.selectivity_ratio[~np.isnan(q.selectivity_ratio)]
        out["selectivity_ratio"] = {
            "maps": int(ratio.size),
            "median": round(float(np.median(ratio)), 4) if ratio.size else None,
            "frac_above_1": round(float(np.mean(ratio > 1)), 4) if ratio.size else None,
        }
    if q.two_choice:
        out["two_choice"] = summarize_two_choice(q.two_choice, q.controls, q.trials, cfg, seed)
    return out


def out_of_range_frac(pixels: Float[np.ndarray, "m H W ch"]) -> Float[np.ndarray, " m"]:
    """Per image, the share of pixels that no 8-bit image holds: below -0.5 or above 255.5 (rounding)."""
    bad = (pixels < -0.5) | (pixels > 255.5)
    return bad.reshape(len(bad), -1).mean(axis=1)


def clip_to_pixels(images: Float[np.ndarray, "m H W ch"], standardization) -> Float[np.ndarray, "m H W ch"]:
    """Standardized images with their pixels clipped to [0, 255]."""
    return standardization(np.clip(standardization.to_pixels(images), 0.0, 255.0)).astype(np.float32)


def measure(
    result,
    cfg: QualityConfig,
    test_x: Float[np.ndarray, "n H W 1"] | None = None,
    values: Float[np.ndarray, "n k"] | None = None,
    on_oip: Float[np.ndarray, "m k"] | None = None,
    min_images: Float[np.ndarray, "m q H W 1"] | None = None,
    on_clipped: Float[np.ndarray, "m k"] | None = None,
) -> MapQuality:
    """All measures of a `ScanResult`: the data-free ones always, the others given the test images' `values`
    (every target's value per standardized test image `test_x`), `on_oip` (every target's value on each
    map's best OIP) and `on_clipped` (the same on the best OIP clipped to pixels [0, 255],
    `clip_to_pixels`; default `on_oip`); `min_images`: the minimizing OIPs for the max+min variant."""
    maps = result.map_indices
    out = MapQuality(stability=stability(result.images, result.objective))
    out.out_of_range_frac = out_of_range_frac(result.standardization.to_pixels(result.best_images))
    if values is not None:
        data_max = values.max(axis=0)
        idx = np.arange(len(maps))
        out.superstimulus_raw = superstimulus(on_oip[idx, maps], data_max[maps])
        clipped = on_oip if on_clipped is None else on_clipped
        out.superstimulus = superstimulus(clipped[idx, maps], data_max[maps])
        out.selectivity_rank, out.selectivity_ratio = selectivity(on_oip, maps, data_max)
        k = min(cfg.references, result.restarts)
        starts, has_oip = oip_references(result.images, result.objective, result.facets(), k)
        refs = result.images[idx[:, None], starts]
        features = feature_observer(cfg, result.standardization)
        out.two_choice, out.controls, out.trials = two_choice(
            test_x, values, maps, refs, has_oip, min_images, cfg, result.seed, result.layer_name, features
        )
        out.trials["oip_ref_starts"] = starts
    out.summary = summarize(out, cfg, result.seed)
    return out


def minimizing_oips(
    model, objective, maps, x0, restarts: int, config, min_starts: int, chunk: int, magnitude=None, setup=None
):
    """(images (m, s, H, W, 1), objectives (m, s)): minimizing OIPs from the first s = min(`min_starts`,
    `restarts`) of each map's screened starts `x0`; an objective is the negated pre-activation's value
    (`objective.minimizing`: a weighted target has every weight negated). Diversity does not apply (one start
    set per map); `magnitude`: MACO's fixed amplitude spectrum, when the scan's parameterization is maco;
    `setup`: the scan's `SearchSetup`.
    """
    from jaxoip.oip.search import SearchSetup, run_search

    negated, idx = objective.minimizing(maps)
    cfg = dataclasses.replace(config, diversity=0.0)
    setup = dataclasses.replace(setup or SearchSetup(), group=1)
    min_starts = min(min_starts, restarts)  # More would repeat starts, and so images.
    starts = x0.reshape(len(maps), restarts, *x0.shape[1:])[:, np.arange(min_starts) % restarts]
    starts = starts.reshape(-1, *x0.shape[1:])
    res = run_search(model, negated, np.repeat(idx, min_starts), starts, cfg, chunk, magnitude=magnitude, setup=setup)
    return res.images.reshape(len(maps), min_starts, *x0.shape[1:]), res.objective.reshape(len(maps), min_starts)
