"""The two-choice protocol: how well a map's OIPs, against its natural exemplars, let an observer tell which
of two test images drives the map harder.

The columns `two_choice_oip`, `two_choice_exemplars` (and `_minmax`), each with its 95% Wilson interval
(`_lo`, `_hi`, over the map's trials, a tie counted half), of the per-map measures (`jaxoip.oip.quality`):
a machine version of the two-alternative task of Borowski et al. (ICLR 2021), designed as follows.

* The test images are split once per seed, by a seeded permutation, into a reference half (natural
  exemplars come from it) and a query half (`QualityConfig.holdout`), so no query is a reference.
* Every other draw of a map comes from its own stream keyed by (seed, layer, map) (`map_rng`): a map's
  trials and values are the same whichever maps are scanned beside it.
* Per map, the query images are ranked by the map's value (the scan's objective; ties in random seeded
  order). A trial pairs one *strong* query, drawn from the top `query_frac` of the query half, with one
  *weak* query, drawn from its bottom `query_frac`; `pairs` trials per map (100 by default; at most the
  pool size), drawn without replacement. For ReLU maps many bottom images tie at zero: weak queries are
  then random non-activating digits. A map whose weakest strong query is not above its strongest weak
  query has no contrast to test: empty.
* References, two arms of the same size k = min(`references`, restarts) per map (9 as Borowski et al.,
  at most the starts a map has): the map's OIPs (its facets' representatives by decreasing objective,
  then its other live starts by decreasing objective, repeated in that order when fewer than k starts
  are live: a repeat does not change the observer's score), or its k top natural exemplars (highest
  values in the reference half).
* The observer sees pixels only: its similarity of a query to a reference is the largest Pearson
  correlation over translations of up to `max_shift` pixels (`shift_similarity_matrix`), its score of a
  query the largest similarity over the references; it picks the query with the higher score (a tie
  counts half). Accuracy per map is the fraction of correct trials; chance is 0.5.
* Max+min variant (`_minmax`), as in the paper: the references also hold min(k, `min_starts`, restarts)
  minimizing images, and the score is the similarity to the maximizing references minus that to the
  minimizing ones. The minimizing OIPs come from one more batched search on the negated pre-activation of
  each target (from the map's first screened starts): the post-ReLU value's minimum is any image that
  silences the map (zero value, zero gradient), the pre-activation's is the pattern the map most
  opposes. Minimizing exemplars are the bottom images of the reference half.
* Chance-level controls, in the summary only: the same trials judged with k references that carry no
  information about the map: the OIPs of the next map of the scan (`other_map_oip`; this one does
  depend on the maps scanned), Gaussian pixel noise (`noise`) and random digits of the reference half
  (`random_digits`).

* A second observer (`QualityConfig.observer_model`): the same trials judged by the cosine similarity of
  the images' features in another, independently trained network (its layer before the last by default),
  closer to how a person compares shapes than pixel correlation; its columns end in `_features`.

The summary reports each arm's mean over maps with a percentile bootstrap CI over maps (seeded), chance,
the controls and the paired difference OIP minus exemplars with its CI. `MapQuality.trials` (a scan's
two_choice.npz) holds every trial's query and reference indices, the reference images and the outcome
of every trial per arm, so the task can be rerun independently.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import numpy as np
from jaxtyping import Bool, Float, Int, Shaped

from jaxoip._check import check_float, check_int
from jaxoip.errors import JaxoipError
from jaxoip.numerics import FAST_COMPILE
from jaxoip.oip.similarity import traced_shift_similarity

CHANCE = 0.5
# Host-side draws: the split from [seed, stream], a CI from [seed, stream, crc32(name)], a map from `map_rng`.
QUALITY_STREAM = 2
TWO_CHOICE = ("two_choice_oip", "two_choice_exemplars", "two_choice_oip_minmax", "two_choice_exemplars_minmax")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Settings of the per-map measures (`jaxoip.oip.quality`): all are the two-choice protocol's (see the
    module docstring); `min_starts` also sizes the minimizing search of its max+min variant."""

    pairs: int = 100  # two-choice trials per map (fewer where the query pools are smaller)
    query_frac: float = 0.02  # strong (top) and weak (bottom) query pools, as a fraction of the query images
    holdout: float = 0.5  # fraction of the test images held out as queries
    max_shift: int = 3  # the observer's largest translation, in pixels
    references: int = 9  # maximizing references per arm (at most the restarts), and as many minimizing ones
    min_starts: int = 9  # starts per map of the minimizing search (at most the restarts); 0: no max+min variant
    bootstrap: int = 2000  # resamples of the maps for each CI
    # A second observer: cosine similarity in the feature space of another network (a checkpoint or Keras
    # file, `resolve_model`), at `observer_layer` (default: its layer before the last); None: pixels only.
    observer_model: str | None = None
    observer_layer: str | None = None

    def __post_init__(self):
        check_int("two-choice pairs", self.pairs, 1)
        check_float("query fraction", self.query_frac, 0, 0.5, lo_open=True)
        check_float("holdout", self.holdout, 0, 1, lo_open=True, hi_open=True)
        check_int("observer shift", self.max_shift, 0, 13)
        check_int("references", self.references, 1)
        check_int("minimizing starts", self.min_starts, 0)
        check_int("bootstrap resamples", self.bootstrap, 1)
        if self.observer_model is not None:
            object.__setattr__(self, "observer_model", str(self.observer_model))


def quality_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), QUALITY_STREAM]))


def map_rng(seed: int, layer_name: str, map_index: int) -> np.random.Generator:
    """The two-choice draws of one map: a stream keyed by (seed, layer, map) alone, so that a map's trials do
    not depend on the maps scanned beside it."""
    return np.random.default_rng([int(seed), QUALITY_STREAM, zlib.crc32(layer_name.encode()), int(map_index)])


def ranked(values: Float[np.ndarray, " n"], rng: np.random.Generator) -> Int[np.ndarray, " n"]:
    """Indices by decreasing value, ties in a random order."""
    return np.lexsort((rng.random(values.shape), -values))


def wilson_interval(
    accuracy: Float[np.ndarray, " m"], trials: int, z: float = 1.959963984540054
) -> tuple[Float[np.ndarray, " m"], Float[np.ndarray, " m"]]:
    """95% Wilson score interval of a proportion `accuracy` over `trials` trials (ties counted half); NaN stays NaN."""
    acc = np.asarray(accuracy, float)
    n = float(trials)
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(np.clip(acc * (1 - acc), 0, None) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


@functools.partial(jax.jit, static_argnames=("max_shift",), compiler_options=FAST_COMPILE)
def observer_similarity(queries, refs, max_shift: int):
    """(m, q, s): per map, each query's shift-invariant similarity to each reference (one program per shape)."""
    return jax.lax.map(lambda qr: traced_shift_similarity(qr[0], qr[1], max_shift)[0], (queries, refs))


def resolve_observer(cfg: QualityConfig):
    """(the second observer's `TrainedModel`, its layer name): `cfg.observer_model` loaded and
    `cfg.observer_layer` checked (default: its layer before the last); one line when either is wrong."""
    from jaxoip.models.checkpoint import resolve_model
    from jaxoip.models.cnn import layer_shapes

    observer = resolve_model(cfg.observer_model)
    layers = list(layer_shapes(observer.config))
    layer = cfg.observer_layer or layers[-2 if len(layers) > 1 else -1]
    if layer not in layers:
        raise JaxoipError(f"the observer model has no layer {layer!r}; its layers: {', '.join(layers)}")
    return observer, layer


def feature_observer(cfg: QualityConfig, standardization):
    """A function from images standardized by `standardization` (the scanned model's) to the second
    observer's features (n, f) (`cfg.observer_model` at `cfg.observer_layer`: map means of a conv layer,
    nodes of a dense one), or None without one; the images are rescaled to the observer's standardization."""
    if cfg.observer_model is None:
        return None
    from jaxoip.oip.precursor import data_activation

    observer, layer = resolve_observer(cfg)

    def features(images):
        if images.shape[1:] != tuple(observer.config.input_shape):
            raise JaxoipError(
                f"the observer model takes images of shape {tuple(observer.config.input_shape)}, "
                f"the scanned one {images.shape[1:]}"
            )
        x = observer.standardization(standardization.to_pixels(np.asarray(images, np.float32)))
        # Every unit's activation (map mean, or dense node), in full batches: a reference's features do not
        # depend on how many maps' references are evaluated with it.
        values = data_activation(observer.model, np.asarray(x, np.float32), layer, pad=True)
        return values.astype(np.float64)

    return features


def feature_similarity(
    queries: Float[np.ndarray, "m q f"], refs: Float[np.ndarray, "m s f"]
) -> Float[np.ndarray, "m q s"]:
    """(m, q, s) cosine similarity of feature vectors (0 where one of them is all zeros)."""

    def unit(v):
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        return v / np.where(norm > 0, norm, 1.0)

    return np.einsum("mqf,msf->mqs", unit(queries), unit(refs))


def trial_correct(sim: Float[np.ndarray, "m 2p s"], pos: slice, neg: slice | None = None) -> Float[np.ndarray, "m p"]:
    """Per map and trial (strong query = first half of the queries, weak = second), 1 if the observer picks
    the strong query, 0.5 for a tie, else 0. A query's score is its largest similarity to the references
    `pos` (columns of `sim`), minus its largest to the `neg` ones if given."""
    score = sim[:, :, pos].max(axis=2) - (sim[:, :, neg].max(axis=2) if neg is not None else 0.0)
    p = sim.shape[1] // 2
    strong, weak = score[:, :p], score[:, p:]
    return np.where(strong > weak, 1.0, np.where(strong == weak, 0.5, 0.0))


def bootstrap_mean(values: Float[np.ndarray, " m"], resamples: int, rng: np.random.Generator) -> dict:
    """Mean over the finite values with a 95% percentile bootstrap CI over them, and their count."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "ci95": None, "maps": 0}
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(v.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "maps": int(v.size)}


def oip_references(
    images: Float[np.ndarray, "m r H W ch"], objective: Float[np.ndarray, "m r"], facets, k: int
) -> tuple[Int[np.ndarray, "m k"], Bool[np.ndarray, " m"]]:
    """(starts, has_oip): per map, `k` start indices, its facets' representatives first (by decreasing
    objective), then its other live starts by decreasing objective, repeated in that order when fewer than
    `k` starts are live (a repeat leaves the observer's score unchanged); maps without a live start: start 0."""
    out = np.zeros((len(images), k), np.int64)
    has = np.zeros(len(images), bool)
    for i, f in enumerate(facets):
        reps = [int(r) for r in f.representatives[f.objectives > 0]]
        live = [int(s) for s in np.argsort(-objective[i], kind="stable") if objective[i, s] > 0 and s not in reps]
        order = reps + live
        if order:
            has[i] = True
            out[i] = np.resize(order, k)
    return out, has


def two_choice(
    test_x: Float[np.ndarray, "n H W ch"],
    values: Float[np.ndarray, "n k"],
    maps: Int[np.ndarray, " m"],
    oip_refs: Float[np.ndarray, "m k H W ch"],
    has_oip: Bool[np.ndarray, " m"],
    min_refs: Float[np.ndarray, "m q H W ch"] | None,
    cfg: QualityConfig,
    seed: int,
    layer_name: str,
    features=None,
) -> tuple[
    dict[str, Float[np.ndarray, " m"]], dict[str, Float[np.ndarray, " m"]], dict[str, Shaped[np.ndarray, " *shape"]]
]:
    """(per-map accuracies with their Wilson intervals, chance-level controls per map, every trial's inputs
    and outcomes for two_choice.npz); see the module docstring. NaN where undefined."""
    n = len(test_x)
    perm = quality_rng(seed).permutation(n)  # The split: one per seed, the same for every layer and map.
    n_query = int(round(cfg.holdout * n))
    query, ref = np.sort(perm[:n_query]), np.sort(perm[n_query:])
    pool = max(1, int(round(cfg.query_frac * n_query)))
    p = min(cfg.pairs, pool)
    m, k = oip_refs.shape[:2]
    q = 0 if min_refs is None else min(k, min_refs.shape[1])
    shape = test_x.shape[1:]
    strong, weak = np.zeros((m, p), np.int64), np.zeros((m, p), np.int64)
    ex_max, ex_min = np.zeros((m, k), np.int64), np.zeros((m, q), np.int64)
    digits, noise = np.zeros((m, k), np.int64), np.zeros((m, k, *shape), np.float32)
    valid = np.zeros(m, bool)
    for i, mi in enumerate(maps):
        rng = map_rng(seed, layer_name, int(mi))
        vq, vr = values[query, mi], values[ref, mi]
        order = ranked(vq, rng)
        top, bottom = order[:pool], order[n_query - pool :]
        strong[i], weak[i] = query[rng.permutation(top)[:p]], query[rng.permutation(bottom)[:p]]
        valid[i] = vq[top].min() > vq[bottom].max()
        order = ranked(vr, rng)
        ex_max[i], ex_min[i] = ref[order[:k]], ref[order[::-1][:q]]
        digits[i] = ref[rng.choice(len(ref), k, replace=False)]
        noise[i] = rng.standard_normal((k, *shape)).astype(np.float32)
    other = (np.arange(m) + 1) % m  # Another map's OIPs: the next map of the scan (a control, not per map).
    slots = [oip_refs, test_x[ex_max], oip_refs[other], noise, test_x[digits]]
    if q:
        slots += [min_refs[:, :q], test_x[ex_min]]
    queries = test_x[np.concatenate([strong, weak], axis=1)]  # (m, 2p, H, W, ch)
    refs = np.concatenate(slots, axis=1)
    sims = {"": np.asarray(observer_similarity(queries, refs, cfg.max_shift), float)}
    if features is not None:  # The second observer: the test images' features once, the references' in one pass.
        test_f = features(test_x)
        ref_f = features(refs.reshape(-1, *shape)).reshape(m, refs.shape[1], -1)
        sims["_features"] = feature_similarity(test_f[np.concatenate([strong, weak], axis=1)], ref_f)
    cols = [slice(j * k, (j + 1) * k) for j in range(5)] + [slice(5 * k, 5 * k + q), slice(5 * k + q, 5 * k + 2 * q)]
    oip_ok, ok = valid & has_oip, valid
    arms, controls = {}, {}
    for obs, sim in sims.items():
        arms[f"two_choice_oip{obs}"] = (trial_correct(sim, cols[0]), oip_ok)
        arms[f"two_choice_exemplars{obs}"] = (trial_correct(sim, cols[1]), ok)
        if q:
            arms[f"two_choice_oip_minmax{obs}"] = (trial_correct(sim, cols[0], cols[5]), oip_ok)
            arms[f"two_choice_exemplars_minmax{obs}"] = (trial_correct(sim, cols[1], cols[6]), ok)
        controls[f"other_map_oip{obs}"] = (trial_correct(sim, cols[2]), valid & has_oip[other] & (m > 1))
        controls[f"noise{obs}"] = (trial_correct(sim, cols[3]), ok)
        controls[f"random_digits{obs}"] = (trial_correct(sim, cols[4]), ok)
    out, chance = {}, {}
    trials = dict(
        map_indices=np.asarray(maps),
        query_images=query,
        reference_images=ref,
        strong=strong,
        weak=weak,
        valid=valid,
        has_oip=has_oip,
        oip_refs=oip_refs,
        exemplar_refs=ex_max,
        other_map=other,
        noise_refs=noise,
        digit_refs=digits,
        max_shift=np.asarray(cfg.max_shift),
    )
    if q:
        trials.update(min_oip_refs=min_refs[:, :q], min_exemplar_refs=ex_min)
    for name, (correct, defined) in arms.items():
        acc = np.where(defined, correct.mean(axis=1), np.nan)
        out[name] = acc
        out[f"{name}_lo"], out[f"{name}_hi"] = wilson_interval(acc, p)
        trials[f"correct_{name.removeprefix('two_choice_')}"] = correct
    for name, (correct, defined) in controls.items():
        chance[name] = np.where(defined, correct.mean(axis=1), np.nan)
        trials[f"correct_{name}"] = correct
    return out, chance, trials


def summarize_two_choice(
    two_choice: dict[str, Float[np.ndarray, " m"]],
    controls: dict[str, Float[np.ndarray, " m"]],
    trials: dict[str, Shaped[np.ndarray, " *shape"]],
    cfg: QualityConfig,
    seed: int,
) -> dict:
    """summary.json's two-choice aggregates: each arm's mean over maps with a bootstrap CI, the paired
    differences OIP minus exemplars, chance and the controls.

    Each CI resamples with its own stream keyed by (seed, its name), so it does not depend on which other
    arms (observers, minimizing references) were measured."""

    def boot(name, values):
        rng = np.random.default_rng([int(seed), QUALITY_STREAM, zlib.crc32(name.encode())])
        return bootstrap_mean(values, cfg.bootstrap, rng)

    arms = [k for k in two_choice if not k.endswith(("_lo", "_hi"))]
    tc = {k: boot(k, two_choice[k]) for k in arms}
    for suffix in ("", "_minmax", "_features", "_minmax_features"):
        a, b = two_choice.get(f"two_choice_oip{suffix}"), two_choice.get(f"two_choice_exemplars{suffix}")
        if a is not None:
            tc[f"oip_minus_exemplars{suffix}"] = boot(f"oip_minus_exemplars{suffix}", a - b)
    agreement = observer_agreement(tc) if cfg.observer_model is not None else None
    return {
        **tc,
        **({"observer_agreement": agreement} if agreement is not None else {}),
        "chance": CHANCE,
        "controls": {k: boot(k, v) for k, v in controls.items()},
        "pairs_per_map": int(trials["strong"].shape[1]),
        "references_per_arm": int(trials["oip_refs"].shape[1]),
        "min_references_per_arm": int(trials["min_oip_refs"].shape[1]) if "min_oip_refs" in trials else 0,
        "observers": ["pixels", *(["features"] if cfg.observer_model is not None else [])],
        "config": dataclasses.asdict(cfg),
    }


def verdict(difference: dict | None) -> str | None:
    """'oip' or 'exemplars' when the 95% CI of the paired difference OIP minus exemplars lies above or below
    0, 'neither' when it holds 0; None when undefined."""
    if difference is None or difference["ci95"] is None:
        return None
    lo, hi = difference["ci95"]
    return "oip" if lo > 0 else "exemplars" if hi < 0 else "neither"


def observer_agreement(tc: dict) -> dict:
    """Where the pixel and the feature observer disagree, from the summary's two-choice aggregates `tc`.

    Per variant (`max`: maximizing references; `minmax`: with the minimizing ones): each observer's verdict
    on OIP against exemplar references (`verdict`), whether the two verdicts differ, and whether the ordering
    of the two arms' means flips between the observers (a flip inside the CIs is no finding on its own).
    `arms_apart`: the arms whose 95% CIs under the two observers do not overlap."""
    out = {}
    for name, suffix in (("max", ""), ("minmax", "_minmax")):
        pix, feat = tc.get(f"oip_minus_exemplars{suffix}"), tc.get(f"oip_minus_exemplars{suffix}_features")
        if pix is None or feat is None or pix["mean"] is None or feat["mean"] is None:
            continue
        v_pix, v_feat = verdict(pix), verdict(feat)
        out[name] = {
            "pixels": v_pix,
            "features": v_feat,
            "verdicts_differ": v_pix != v_feat,
            "ordering_flips": bool(np.sign(pix["mean"]) * np.sign(feat["mean"]) < 0),
        }
    apart = []
    for arm in TWO_CHOICE:
        a, b = tc.get(arm), tc.get(f"{arm}_features")
        if a and b and a["ci95"] is not None and b["ci95"] is not None:
            if a["ci95"][1] < b["ci95"][0] or b["ci95"][1] < a["ci95"][0]:
                apart.append(arm)
    out["arms_apart"] = apart
    return out
