"""How far each map's OIP can be trusted: per-map measures that every scan computes.

- `superstimulus`: the map's value on its best OIP over its largest value on the test images (how much
  harder the OIP drives it than any real digit). Empty for maps dead on data (largest value <= 0).
- `selectivity_rank`, `selectivity_ratio`: on a map's best OIP, every map of the layer (every target, for
  weighted sums) is normalized by its own largest value on the test images; the rank of the target among
  them (0: the OIP drives its own map hardest) and its normalized value over the largest other one (> 1:
  the OIP is selective; inf when no other map responds). Maps dead on data take no part: their normalized
  value is undefined.
- `stability`: the mean shift-invariant similarity (`jaxoip.oip.facets.shift_similarity`, the facets'
  measure) over pairs of the map's live starts (positive objective); empty with fewer than two.
- `two_choice_oip`, `two_choice_exemplars` (and `_minmax`): a machine version of the two-alternative task of
  Borowski et al. (ICLR 2021), designed as follows.

  * The test images are split once, by a seeded permutation, into a reference half (natural exemplars come
    from it) and a query half (`QualityConfig.holdout`), so no query is ever one of the references.
  * Per map, the query images are ranked by the map's value (the scan's objective; ties in random seeded
    order). A trial pairs one *strong* query, drawn from the top `query_frac` of the query half, with one
    *weak* query, drawn from its bottom `query_frac`; `pairs` trials per map, drawn without replacement.
    For ReLU maps many bottom images tie at zero: weak queries are then random non-activating digits.
    A map whose weakest strong query is not above its strongest weak query has no contrast to test: empty.
  * References, two arms with the same number of images per map: the map's OIPs (the representatives of its
    facets, the distinct patterns its starts found), or as many of its top natural exemplars (highest
    values in the reference half).
  * The observer sees pixels only: its similarity of a query to a reference is the largest Pearson
    correlation over translations of up to `max_shift` pixels (`shift_similarity_matrix`), its score of a
    query the largest similarity over the references; it picks the query with the higher score (a tie
    counts half). Accuracy per map is the fraction of correct trials; chance is 0.5.
  * Max+min variant (`_minmax`), as in the paper: the references also hold minimizing images, and the score
    is the similarity to the maximizing references minus that to the minimizing ones. The minimizing OIPs
    come from one more batched search (`min_starts` per map) on the negated pre-activation of each target:
    the post-ReLU value's minimum is any image that silences the map (zero value, zero gradient), the
    pre-activation's is the pattern the map most opposes. Minimizing exemplars are the bottom images of the
    reference half.

  The summary reports each arm's mean over maps with a percentile bootstrap CI over maps (seeded), chance,
  and the paired difference OIP minus exemplars with its CI.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jaxtyping import Bool, Float, Int

from jaxoip._check import check_float, check_int
from jaxoip.oip.facets import shift_similarity
from jaxoip.oip.similarity import shift_similarity_matrix

CHANCE = 0.5
QUALITY_STREAM = 2  # Host-side draws (split, pairs, ties, bootstrap) from SeedSequence([seed, stream]).
TWO_CHOICE = ("two_choice_oip", "two_choice_exemplars", "two_choice_oip_minmax", "two_choice_exemplars_minmax")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Settings of the per-map measures (see the module docstring)."""

    pairs: int = 20  # two-choice trials per map
    query_frac: float = 0.02  # strong (top) and weak (bottom) query pools, as a fraction of the query images
    holdout: float = 0.5  # fraction of the test images held out as queries
    max_shift: int = 3  # the observer's largest translation, in pixels
    min_starts: int = 1  # starts per map of the minimizing search; 0: no max+min variant
    bootstrap: int = 2000  # resamples of the maps for each CI

    def __post_init__(self):
        check_int("two-choice pairs", self.pairs, 1)
        check_float("query fraction", self.query_frac, 0, 0.5, lo_open=True)
        check_float("holdout", self.holdout, 0, 1, lo_open=True, hi_open=True)
        check_int("observer shift", self.max_shift, 0, 13)
        check_int("minimizing starts", self.min_starts, 0)
        check_int("bootstrap resamples", self.bootstrap, 1)


@dataclasses.dataclass
class MapQuality:
    """Per searched map (in `ScanResult.map_indices` order); NaN where a measure is undefined."""

    stability: Float[np.ndarray, " m"]
    superstimulus: Float[np.ndarray, " m"] | None = None
    selectivity_rank: Float[np.ndarray, " m"] | None = None  # integer-valued, NaN when undefined
    selectivity_ratio: Float[np.ndarray, " m"] | None = None
    two_choice: dict[str, Float[np.ndarray, " m"]] = dataclasses.field(default_factory=dict)
    summary: dict = dataclasses.field(default_factory=dict)

    def columns(self) -> dict[str, np.ndarray]:
        """The table's columns, in order (only the measures computed)."""
        out = {}
        if self.superstimulus is not None:
            out["superstimulus"] = self.superstimulus
            out["selectivity_rank"] = self.selectivity_rank
            out["selectivity_ratio"] = self.selectivity_ratio
        out["stability"] = self.stability
        return {**out, **self.two_choice}


def quality_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), QUALITY_STREAM]))


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


def random_order(values: Float[np.ndarray, "n k"], rng: np.random.Generator) -> Int[np.ndarray, "k n"]:
    """Per column, the row indices by decreasing value, ties in a random order."""
    tie = rng.random(values.shape)
    return np.stack([np.lexsort((tie[:, j], -values[:, j])) for j in range(values.shape[1])])


def query_pairs(
    values: Float[np.ndarray, "n k"], maps: Int[np.ndarray, " m"], cfg: QualityConfig, rng: np.random.Generator
) -> tuple[Int[np.ndarray, "m p"], Int[np.ndarray, "m p"], Bool[np.ndarray, " m"]]:
    """(strong, weak, valid): per map, `p` trials' query rows; valid where the strong pool beats the weak one."""
    n = values.shape[0]
    pool = max(1, int(round(cfg.query_frac * n)))
    p = min(cfg.pairs, pool)
    order = random_order(values[:, maps], rng)  # (m, n)
    top, bottom = order[:, :pool], order[:, n - pool :]
    pick = lambda rows: np.stack([rng.permutation(r)[:p] for r in rows])  # noqa: E731
    strong, weak = pick(top), pick(bottom)
    v = values[:, maps].T  # (m, n)
    m = np.arange(len(maps))[:, None]
    valid = v[m, top].min(axis=1) > v[m, bottom].max(axis=1)
    return strong, weak, valid


@functools.partial(jax.jit, static_argnames=("max_shift",))
def observer_similarity(queries, refs, max_shift: int):
    """(m, q, s): per map, each query's shift-invariant similarity to each reference (one program per shape)."""
    return jax.lax.map(lambda qr: shift_similarity_matrix(qr[0], qr[1], max_shift)[0], (queries, refs))


def two_choice_accuracy(
    sim: Float[np.ndarray, "m 2p s"], pos: Bool[np.ndarray, "m s"], neg: Bool[np.ndarray, "m s"] | None = None
) -> Float[np.ndarray, " m"]:
    """Per map, the fraction of trials (strong query = first half, weak = second) the observer gets right.

    The score is the largest similarity to the `pos` references, minus that to the `neg` ones if given.
    """

    def best(mask):
        return np.where(mask[:, None, :], sim, -np.inf).max(axis=2)

    score = best(pos) - (best(neg) if neg is not None else 0.0)
    p = sim.shape[1] // 2
    strong, weak = score[:, :p], score[:, p:]
    correct = np.where(strong > weak, 1.0, np.where(strong == weak, 0.5, 0.0))
    return correct.mean(axis=1)


def bootstrap_mean(values: Float[np.ndarray, " m"], resamples: int, rng: np.random.Generator) -> dict:
    """Mean over the finite values with a 95% percentile bootstrap CI over them, and their count."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "ci95": None, "maps": 0}
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(v.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "maps": int(v.size)}


def two_choice(
    test_x: Float[np.ndarray, "n H W 1"],
    values: Float[np.ndarray, "n k"],
    maps: Int[np.ndarray, " m"],
    oip_refs: Float[np.ndarray, "m r H W 1"],
    oip_mask: Bool[np.ndarray, "m r"],
    min_refs: Float[np.ndarray, "m q H W 1"] | None,
    cfg: QualityConfig,
    rng: np.random.Generator,
) -> dict[str, Float[np.ndarray, " m"]]:
    """The two-choice accuracies per map (NaN where undefined); see the module docstring."""
    n = len(test_x)
    perm = rng.permutation(n)
    n_query = int(round(cfg.holdout * n))
    query, ref = np.sort(perm[:n_query]), np.sort(perm[n_query:])
    strong, weak, valid = query_pairs(values[query], maps, cfg, rng)
    m, r = oip_mask.shape
    # Exemplars: as many per map as it has OIP references, the top of the reference half.
    order = random_order(values[ref][:, maps], rng)  # (m, n_ref)
    ex_max = ref[order[:, :r]]
    ex_mask = oip_mask.copy()
    if not oip_mask.any(axis=1).all():  # A map without an OIP still gets one exemplar.
        ex_mask[~oip_mask.any(axis=1), 0] = True
    slots = [oip_refs, test_x[ex_max]]
    q = 0
    if min_refs is not None:
        q = min_refs.shape[1]
        slots += [min_refs, test_x[ref[order[:, ::-1][:, :q]]]]
    queries = test_x[query][np.concatenate([strong, weak], axis=1)]  # (m, 2p, H, W, 1)
    sim = np.asarray(observer_similarity(queries, np.concatenate(slots, axis=1), cfg.max_shift), float)
    off = np.zeros((m, r + r + 2 * q), bool)

    def mask(start, width, on=None):
        out = off.copy()
        out[:, start : start + width] = True if on is None else on
        return out

    has_oip = oip_mask.any(axis=1)
    oip, ex = mask(0, r, oip_mask), mask(r, r, ex_mask)
    out = {
        "two_choice_oip": np.where(valid & has_oip, two_choice_accuracy(sim, oip), np.nan),
        "two_choice_exemplars": np.where(valid, two_choice_accuracy(sim, ex), np.nan),
    }
    if min_refs is not None:
        oip_min, ex_min = mask(2 * r, q), mask(2 * r + q, q)
        out["two_choice_oip_minmax"] = np.where(valid & has_oip, two_choice_accuracy(sim, oip, oip_min), np.nan)
        out["two_choice_exemplars_minmax"] = np.where(valid, two_choice_accuracy(sim, ex, ex_min), np.nan)
    return out


def summarize(q: MapQuality, cfg: QualityConfig, rng: np.random.Generator) -> dict:
    """summary.json's aggregates: distributions of the per-map measures, two-choice means with CIs and chance."""

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
    if q.superstimulus is not None:
        out["superstimulus"] = dist(q.superstimulus)
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
        tc = {k: bootstrap_mean(v, cfg.bootstrap, rng) for k, v in q.two_choice.items()}
        for suffix in ("", "_minmax"):
            a, b = q.two_choice.get(f"two_choice_oip{suffix}"), q.two_choice.get(f"two_choice_exemplars{suffix}")
            if a is not None:
                tc[f"oip_minus_exemplars{suffix}"] = bootstrap_mean(a - b, cfg.bootstrap, rng)
        out["two_choice"] = {**tc, "chance": CHANCE, "pairs_per_map": cfg.pairs, "config": dataclasses.asdict(cfg)}
    return out


def measure(
    result,
    cfg: QualityConfig,
    test_x: Float[np.ndarray, "n H W 1"] | None = None,
    values: Float[np.ndarray, "n k"] | None = None,
    on_oip: Float[np.ndarray, "m k"] | None = None,
    min_images: Float[np.ndarray, "m q H W 1"] | None = None,
) -> MapQuality:
    """All measures of a `ScanResult`: the data-free ones always, the others given the test images' `values`
    (every target's value per standardized test image `test_x`) and `on_oip` (every target's value on each
    map's best OIP); `min_images`: the minimizing OIPs for the max+min variant."""
    rng = quality_rng(result.seed)
    maps = result.map_indices
    out = MapQuality(stability=stability(result.images, result.objective))
    if values is not None:
        data_max = values.max(axis=0)
        own = on_oip[np.arange(len(maps)), maps]
        out.superstimulus = superstimulus(own, data_max[maps])
        out.selectivity_rank, out.selectivity_ratio = selectivity(on_oip, maps, data_max)
        facets = result.facets()
        r = result.restarts
        refs = np.zeros((len(maps), r, *result.images.shape[2:]), np.float32)
        mask = np.zeros((len(maps), r), bool)
        for i, f in enumerate(facets):
            reps = f.representatives[f.objectives > 0]
            refs[i, : len(reps)] = result.images[i][reps]
            mask[i, : len(reps)] = True
        out.two_choice = two_choice(test_x, values, maps, refs, mask, min_images, cfg, rng)
    out.summary = summarize(out, cfg, rng)
    return out


def minimizing_config(config, maps: Int[np.ndarray, " m"]):
    """(config, target indices) of the search on each target's negated pre-activation, one start set per map.

    A weighted target with weight -1 expresses the negation; for weighted sums every weight is negated.
    Wake-up, diversity and the selective objective do not apply (the pre-activation has a gradient
    everywhere; one start set; a weighted target has no single map to compare with the others).
    """
    if config.weighted:
        terms = tuple(tuple((u, -w) for u, w in config.weighted[int(m)]) for m in maps)
    else:
        terms = tuple(((int(m), -1.0),) for m in maps)
    cfg = dataclasses.replace(
        config, weighted=terms, quantity="pre", wake=False, diversity=0.0, diversity_group=1, selective=0.0
    )
    return cfg, np.arange(len(maps), dtype=np.int32)


def minimizing_oips(
    model, layer_name: str, maps, x0, restarts: int, config, node, min_starts: int, chunk=None, magnitude=None
):
    """(m, min_starts, H, W, 1) minimizing OIPs from the first `min_starts` of each map's screened starts `x0`.

    `magnitude`: MACO's fixed amplitude spectrum, when the scan's parameterization is maco.
    """
    from jaxoip.oip.search import search_oips

    cfg, idx = minimizing_config(config, maps)
    starts = x0.reshape(len(maps), restarts, *x0.shape[1:])[:, np.arange(min_starts) % restarts]
    starts = starts.reshape(-1, *x0.shape[1:])
    res = search_oips(model, layer_name, np.repeat(idx, min_starts), starts, cfg, node, chunk, magnitude=magnitude)
    return res.images.reshape(len(maps), min_starts, *x0.shape[1:])
