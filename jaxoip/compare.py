"""Seed comparison: do independently trained copies of the CNN learn the same filters, in the same order?

Features are the post-ReLU activations of a conv layer on the real test images, with spatial positions
as samples. For every pair of models and every conv layer: the channel x channel Pearson correlation,
the Hungarian matching that maximizes it and the semi-matching (each channel's best partner), the
"same order?" statistics, linear CKA (biased and debiased), the cosine similarity of matched first-layer
kernels, and for matched maps of one layer (Conv2D_3) the similarity of their optimal input patterns.

Beside every number, two nulls: a trained model against an untrained network of the same architecture,
and the trained pair with the test images shuffled for the second model. Confidence intervals come from
a bootstrap over images and one over seed pairs.

Every statistic is a function of per-block sufficient statistics (sums and cross-products of the
features over blocks of test images), so a bootstrap replicate over images is a weighted sum over
blocks, not another pass over the data.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from flax import nnx
from scipy.optimize import linear_sum_assignment

from jaxoip._io import prepare_output
from jaxoip._check import check_float, check_int
from jaxoip.data import MNIST
from jaxoip.errors import CheckpointError, JaxoipError, LayerError
from jaxoip.model import TrainedModel, get_layer, init_model, layer_output, layer_shapes, layer_specs
from jaxoip.noise import initial_images
from jaxoip.oip import OIPConfig, search_oips

COMPARISONS = ("real", "shuffled", "untrained")
CONV_LAYERS = ("Conv2D_1", "Conv2D_2", "Conv2D_3")
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What to compare and how; the defaults are the study's comparison.

    `max_samples` caps the spatial samples per layer: each test image contributes
    min(H*W, ceil(max_samples / images)) positions of the layer's maps, drawn at random without
    replacement (image i of every batch of 500 gets its own draw; all models see the same positions).
    """

    layers: tuple[str, ...] = CONV_LAYERS
    test_subset: int | None = None  # Use the first N test images.
    max_samples: int = 200_000
    blocks: int = 100  # Blocks of test images resampled by the image bootstrap.
    bootstrap: int = 200
    ci: float = 0.95
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)
    oip_layer: str | None = "Conv2D_3"
    oip_maps: int = 16  # Matched maps per pair, evenly spaced in the ranking of their correlation.
    oip_restarts: int = 8
    oip: OIPConfig = OIPConfig()
    oip_recipe: str = "study"
    seed: int = 0  # Positions, image shuffle, untrained networks, bootstrap and OIP starts.

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not self.layers:
            raise JaxoipError("no layer to compare")
        check_int("max_samples", self.max_samples, 1)
        check_int("blocks", self.blocks, 2)
        check_int("bootstrap", self.bootstrap, 1)
        check_int("test_subset", self.test_subset, 2, optional=True)
        check_int("oip_maps", self.oip_maps, 1)
        check_int("oip_restarts", self.oip_restarts, 1)
        check_int("seed", self.seed)
        check_float("ci", self.ci, 0, 1, lo_open=True, hi_open=True)
        for t in self.thresholds:
            check_float("threshold", t, -1, 1)
        if self.oip_layer is not None:
            if self.oip_layer not in self.layers:
                raise LayerError(
                    f"the OIP layer {self.oip_layer!r} is not among the compared layers "
                    f"{', '.join(self.layers)} (add it, or skip the OIP comparison with oip_layer None)"
                )
            if self.oip_restarts < 2 or self.oip_maps < 2:
                raise JaxoipError("the OIP comparison needs at least 2 restarts and 2 maps")


# ---------------------------------------------------------------------------------------------------
# Features and their sufficient statistics


def check_models(models: Sequence[TrainedModel], layers: Sequence[str] = CONV_LAYERS) -> None:
    """At least two models, one architecture, and `layers` conv layers of it; a JaxoipError otherwise."""
    if len(models) < 2:
        raise JaxoipError(f"a seed comparison needs at least two models, got {len(models)}")
    first = models[0].config
    for i, m in enumerate(models[1:], 1):
        if m.config != first:
            raise CheckpointError(
                f"models 0 and {i} have different architectures: conv {first.conv}, dense {first.dense} "
                f"vs conv {m.config.conv}, dense {m.config.dense}"
            )
    for name in layers:
        get_layer(first, name, ("conv",))


def positions_per_image(layer_hw: tuple[int, int], images: int, max_samples: int) -> int:
    return int(min(layer_hw[0] * layer_hw[1], max(1, math.ceil(max_samples / images))))


def sample_positions(seed: int, rows: int, hw: int, k: int) -> np.ndarray:
    """(rows, k) flat map positions, each row a random draw without replacement from 0..hw-1."""
    if k >= hw:
        return np.tile(np.arange(hw, dtype=np.int32), (rows, 1))
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(hw, dtype=np.int32), (rows, 1)), axis=1)[:, :k]


@functools.lru_cache(maxsize=16)
def _feature_pass(graphdef: nnx.GraphDef, layer_name: str, hwc: tuple[int, int, int]):
    """Jitted (params, image batches (steps, B, H, W, 1), positions (B, k)) -> (steps, B, k, C).

    Like `batched_layer_map`, but it gathers sampled positions (a per-batch input) inside the compiled
    pass, so the full activations of large layers are never gathered; compiled once per architecture
    and layer and reused for every model compared.
    """
    h, w, c = hwc

    def run(params, xs, pos):
        def one(x):
            acts = layer_output(graphdef, params, x, layer_name)
            return jax.vmap(lambda a, p: a.reshape(h * w, c)[p])(acts, pos)

        return jax.lax.map(one, xs)

    return jax.jit(run)


def layer_features(
    trained: TrainedModel, pixels, layer_name: str, positions: np.ndarray | None = None, batch_size: int = 500
) -> np.ndarray:
    """Post-ReLU activations of `layer_name` at sampled positions: (images, k, channels), float32.

    `positions` (B, k) are flat map positions with B = min(batch_size, images); image i uses row
    i % B. Default: all positions.
    """
    hwc = layer_shapes(trained.config)[get_layer(trained.config, layer_name, ("conv",)).name]
    x = np.asarray(trained.standardization(np.asarray(pixels, np.float32)), np.float32)
    n = x.shape[0]
    bs = max(1, min(batch_size, n))
    if positions is None:
        positions = np.tile(np.arange(hwc[0] * hwc[1], dtype=np.int32), (bs, 1))
    positions = np.asarray(positions, np.int32)
    if positions.shape[0] != bs:
        raise JaxoipError(f"positions must have {bs} rows (the batch size), got {positions.shape[0]}")
    steps = -(-n // bs)
    padded = np.concatenate([x, np.zeros((steps * bs - n, *x.shape[1:]), np.float32)])
    graphdef, params = nnx.split(trained.model)
    out = _feature_pass(graphdef, layer_name, hwc)(params, padded.reshape(steps, bs, *x.shape[1:]), positions)
    return np.asarray(out).reshape(steps * bs, *out.shape[2:])[:n]


def live_channels(features: np.ndarray) -> np.ndarray:
    """Channels that are not constant over the samples (dead ReLUs are constant zero)."""
    f = features.reshape(-1, features.shape[-1])
    spread = f.max(axis=0).astype(np.float64) - f.min(axis=0)
    return spread > 1e-7 * np.maximum(1.0, np.abs(f).max(axis=0))


def block_bounds(n_images: int, blocks: int) -> np.ndarray:
    """Start image of each of `blocks` contiguous, nearly equal blocks, plus the end."""
    return np.linspace(0, n_images, min(blocks, n_images) + 1).round().astype(int)


def block_moments(x: np.ndarray, y: np.ndarray, bounds: np.ndarray) -> dict[str, np.ndarray]:
    """Per block of images: sums over samples of x, y, x y^T, x |y|^2, y |x|^2, |x|^2 |y|^2, and counts.

    `x` (images, k, dx), `y` (images, k, dy): row i of both is the same sample.
    """
    out = {k: [] for k in ("n", "sx", "sy", "Sxy", "uxy", "uyx", "qxy")}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        xb = x[lo:hi].reshape(-1, x.shape[-1]).astype(np.float64)
        yb = y[lo:hi].reshape(-1, y.shape[-1]).astype(np.float64)
        nx, ny = (xb**2).sum(1), (yb**2).sum(1)
        out["n"].append(float(xb.shape[0]))
        out["sx"].append(xb.sum(0))
        out["sy"].append(yb.sum(0))
        out["Sxy"].append(xb.T @ yb)
        out["uxy"].append(xb.T @ ny)
        out["uyx"].append(yb.T @ nx)
        out["qxy"].append(float(nx @ ny))
    return {k: np.asarray(v) for k, v in out.items()}


def weighted(moments: dict[str, np.ndarray], w: np.ndarray) -> dict[str, np.ndarray]:
    """Totals over blocks, block b counted w[b] times (w = ones: the data itself)."""
    return {k: np.tensordot(w, v, axes=1) for k, v in moments.items()}


# ---------------------------------------------------------------------------------------------------
# Statistics from totals


def correlation_from_totals(tx: dict, ty: dict, txy: dict) -> np.ndarray:
    """Pearson correlation (dx, dy); 0 where a channel has no variance."""
    n = txy["n"]
    mx, my = txy["sx"] / n, txy["sy"] / n
    cov = txy["Sxy"] / n - np.outer(mx, my)
    vx = np.diag(tx["Sxy"]) / n - mx**2
    vy = np.diag(ty["Sxy"]) / n - my**2
    denom = np.sqrt(np.clip(np.outer(vx, vy), 0.0, None))
    return np.where(denom > _EPS, cov / np.where(denom > _EPS, denom, 1.0), 0.0)


def _centered_cross_norm2(txy: dict) -> float:
    n = txy["n"]
    c = txy["Sxy"] - np.outer(txy["sx"], txy["sy"]) / n
    return float(np.sum(c**2))


def _hsic_unbiased(txy: dict, qx: float, qy: float) -> float:
    """Song et al.'s unbiased HSIC of linear kernels, in feature space (no n x n Gram matrix).

    With K~, L~ the Gram matrices with zeroed diagonals:
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    """
    n = txy["n"]
    sx, sy, S = txy["sx"], txy["sy"], txy["Sxy"]
    t1 = np.sum(S**2) - txy["qxy"]
    kx, ly = sx @ sx - qx, sy @ sy - qy
    t3 = sx @ S @ sy - sx @ txy["uxy"] - sy @ txy["uyx"] + txy["qxy"]
    return float((t1 + kx * ly / ((n - 1) * (n - 2)) - 2.0 * t3 / (n - 2)) / (n * (n - 3)))


def cka_from_totals(tx: dict, ty: dict, txy: dict) -> tuple[float, float]:
    """(biased, debiased) linear CKA; 0 where a side has no variance."""
    num = _centered_cross_norm2(txy)
    den = math.sqrt(_centered_cross_norm2(tx) * _centered_cross_norm2(ty))
    biased = num / den if den > _EPS else 0.0
    qx, qy = float(np.trace(tx["Sxy"])), float(np.trace(ty["Sxy"]))
    hxy = _hsic_unbiased(txy, qx, qy)
    hxx, hyy = _hsic_unbiased(tx, qx, qx), _hsic_unbiased(ty, qy, qy)
    debiased = hxy / math.sqrt(hxx * hyy) if hxx > 0 and hyy > 0 else 0.0
    return biased, debiased


def _moments_of(x: np.ndarray, y: np.ndarray) -> dict:
    xx = x.reshape(-1, 1, x.shape[-1]) if x.ndim == 2 else x
    yy = y.reshape(-1, 1, y.shape[-1]) if y.ndim == 2 else y
    return weighted(block_moments(xx, yy, np.asarray([0, xx.shape[0]])), np.ones(1))


def linear_cka(x, y, debiased: bool = False) -> float:
    """Linear CKA of features x (n, dx) and y (n, dy) (samples in rows), biased or debiased."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    b, d = cka_from_totals(_moments_of(x, x), _moments_of(y, y), _moments_of(x, y))
    return d if debiased else b


def correlation_matrix(x, y) -> np.ndarray:
    """Pearson correlation of the channels of x (n, dx) and y (n, dy); 0 for constant channels."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return correlation_from_totals(_moments_of(x, x), _moments_of(y, y), _moments_of(x, y))


def match_channels(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching (rows, cols) maximizing the summed correlation; min(dx, dy) pairs."""
    rows, cols = linear_sum_assignment(np.asarray(corr), maximize=True)
    return rows, cols


def semi_match(corr: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's best column, and how many rows share a best column with another (duplicates)."""
    best = np.argmax(corr, axis=1)
    return best, int(len(best) - len(np.unique(best)))


def kernel_vectors(trained: TrainedModel, layer_name: str) -> np.ndarray:
    """(channels, kh*kw*c_in) kernels of a conv layer."""
    k = np.asarray(getattr(trained.model, layer_name).kernel[...])
    return k.reshape(-1, k.shape[-1]).T


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(na * nb, _EPS)


def pair_metrics(
    corr: np.ndarray,
    live_a: np.ndarray,
    live_b: np.ndarray,
    cka: tuple[float, float],
    thresholds: Sequence[float],
    null95: float | None = None,
    kernels: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, float], dict]:
    """Matching metrics of one pair from its full correlation matrix; dead channels are left out.

    Returns (metrics, detail) where detail holds the matched channel indices and correlations.
    """
    ia, ib = np.flatnonzero(live_a), np.flatnonzero(live_b)
    r = corr[np.ix_(ia, ib)]
    m = {"live_a": float(len(ia)), "live_b": float(len(ib))}
    m["dead_a"], m["dead_b"] = float(len(live_a) - len(ia)), float(len(live_b) - len(ib))
    if r.size == 0:
        rows = cols = np.zeros(0, int)
    else:
        rows, cols = match_channels(r)
    matched = r[rows, cols]
    m["matched_corr"] = float(matched.mean()) if matched.size else 0.0
    common = min(len(live_a), len(live_b))
    both = np.flatnonzero(live_a[:common] & live_b[:common])
    m["diagonal_corr"] = float(corr[both, both].mean()) if both.size else 0.0
    m["in_place"] = float(np.sum(ia[rows] == ib[cols]))
    m["in_place_chance"] = float(len(both) / max(len(ia), len(ib), 1))
    if r.size:
        _, dup_ab = semi_match(r)
        _, dup_ba = semi_match(r.T)
        m["semi_corr"] = float((r.max(1).mean() + r.max(0).mean()) / 2)
        m["semi_duplicates"] = float((dup_ab + dup_ba) / 2)
    else:
        m["semi_corr"] = m["semi_duplicates"] = 0.0
    for t in thresholds:
        m[f"frac_above_{t:g}"] = float(np.mean(matched > t)) if matched.size else 0.0
    if null95 is not None:
        m["frac_above_null95"] = float(np.mean(matched > null95)) if matched.size else 0.0
    m["cka_linear"], m["cka_debiased"] = cka
    if kernels is not None:
        cos = _cosine_rows(kernels[0][ia[rows]], kernels[1][ib[cols]])
        m["kernel_cosine"] = float(cos.mean()) if cos.size else 0.0
    detail = {"a": ia[rows], "b": ib[cols], "corr": matched}
    return m, detail


# ---------------------------------------------------------------------------------------------------
# OIP similarity of matched maps


def _unit_images(images: np.ndarray) -> np.ndarray:
    """Flattened images with zero mean and unit norm, so dot products are Pearson correlations."""
    f = images.reshape(*images.shape[:-3], -1).astype(np.float64)
    f = f - f.mean(-1, keepdims=True)
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), _EPS)


def oip_similarity(oips_a: np.ndarray, oips_b: np.ndarray) -> dict[str, np.ndarray]:
    """Similarity of matched maps' OIPs; arrays (maps, restarts, H, W, 1), map i of a matched to map i of b.

    Pixel correlations averaged over pairs of different restarts: `cross` between the matched maps,
    `ceiling` within each map's own restarts (mean of both models), `floor` between a map and the
    partners of the other maps; `same_start` between the matched maps' OIPs from the same start.
    """
    za, zb = _unit_images(oips_a), _unit_images(oips_b)
    m, r = za.shape[:2]
    cross = np.einsum("mrp,msp->mrs", za, zb)
    within_a = np.einsum("mrp,msp->mrs", za, za)
    within_b = np.einsum("mrp,msp->mrs", zb, zb)
    off = ~np.eye(r, dtype=bool)
    per_map = lambda s: s[:, off].mean(1)  # noqa: E731
    allpairs = np.einsum("mrp,nsp->mnrs", za, zb)[..., off].mean(-1)  # (m, n)
    floor = (allpairs.sum(1) - np.diag(allpairs)) / max(m - 1, 1)
    return {
        "cross": per_map(cross),
        "same_start": np.einsum("mrr->mr", cross).mean(1),
        "ceiling": (per_map(within_a) + per_map(within_b)) / 2,
        "floor": floor,
    }


def select_oip_maps(detail: dict, k: int) -> np.ndarray:
    """Positions in the matching of `k` matched pairs evenly spaced in the ranking of their correlation."""
    order = np.argsort(-detail["corr"])
    if len(order) <= k:
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]


# ---------------------------------------------------------------------------------------------------
# The comparison


@dataclasses.dataclass
class SeedComparison:
    """All numbers of a seed comparison.

    `pairs_table`: point estimates, one row per (layer, comparison, pair, metric). `image_bootstrap`:
    per (layer, comparison) a DataFrame of bootstrap replicates (rows) of the mean over pairs.
    `details`: per (layer, comparison, pair) the matched channels and correlations; `correlations`:
    per (layer, comparison, pair) the full correlation matrix. `oip`: per pair the OIP similarities.
    """

    names: tuple[str, ...]
    model_info: list[dict]
    pairs: tuple[tuple[int, int], ...]
    config: CompareConfig
    pairs_table: pd.DataFrame
    image_bootstrap: dict
    details: dict
    correlations: dict
    live: dict  # (layer, model index) -> live mask
    null95: dict  # layer -> 95th percentile of matched correlations with shuffled images
    samples: dict  # layer -> (images, positions per image)
    oip: dict  # pair -> dict with maps and similarity arrays
    oip_images: dict  # (model index, map) -> (restarts, H, W, 1) images, standardized
    oip_objective: dict
    seconds: float = 0.0

    def metric_names(self, layer: str) -> list[str]:
        t = self.pairs_table
        return list(dict.fromkeys(t[t["layer"] == layer]["metric"]))

    def _interval(self, values: np.ndarray) -> tuple[float, float]:
        a = (1 - self.config.ci) / 2
        return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))

    def pair_bootstrap(self, layer: str, comparison: str, metric: str) -> np.ndarray:
        """Replicates of the mean over seed pairs, resampling pairs with replacement."""
        t = self.pairs_table
        v = t[(t["layer"] == layer) & (t["comparison"] == comparison) & (t["metric"] == metric)]["value"].to_numpy()
        rng = np.random.default_rng(self.config.seed + 1)
        idx = rng.integers(0, len(v), size=(self.config.bootstrap, len(v)))
        return v[idx].mean(1)

    def table(self, layer: str) -> pd.DataFrame:
        """Per metric: mean over pairs, CI over images and over pairs, and the two nulls (means over pairs)."""
        t = self.pairs_table[self.pairs_table["layer"] == layer]
        means = t.groupby(["comparison", "metric"], sort=False)["value"].mean()
        rows = []
        for metric in self.metric_names(layer):
            row = {"metric": metric, "mean": means.get(("real", metric), np.nan)}
            boot = self.image_bootstrap.get((layer, "real"))
            if boot is not None and metric in boot:
                row["ci_images_lo"], row["ci_images_hi"] = self._interval(boot[metric].to_numpy())
            else:
                row["ci_images_lo"] = row["ci_images_hi"] = np.nan
            row["ci_pairs_lo"], row["ci_pairs_hi"] = self._interval(self.pair_bootstrap(layer, "real", metric))
            for c in ("shuffled", "untrained"):
                row[f"null_{c}"] = means.get((c, metric), np.nan)
                boot = self.image_bootstrap.get((layer, c))
                if boot is not None and metric in boot:
                    row[f"null_{c}_ci_lo"], row[f"null_{c}_ci_hi"] = self._interval(boot[metric].to_numpy())
            rows.append(row)
        return pd.DataFrame(rows)

    def headline(self, layer: str) -> str:
        """A few words per layer: the same features? in the same order?"""
        tab = self.table(layer).set_index("metric")
        g = lambda metric, col="mean": float(tab.loc[metric, col])  # noqa: E731
        nulls = max(g("matched_corr", "null_shuffled"), g("matched_corr", "null_untrained"))
        lo = g("matched_corr", "ci_images_lo")
        frac = g("frac_above_null95")
        if lo > nulls and frac >= 0.9:
            same = "yes"
        elif lo > nulls:
            same = "partly"
        else:
            same = "no"
        live = (g("live_a") + g("live_b")) / 2
        in_place, chance = g("in_place"), g("in_place_chance")
        if in_place > 0.5 * live:
            order = "yes"
        else:
            order = "partly" if in_place > chance + 3 * math.sqrt(max(chance, 1)) else "no"
        text = (
            f"{layer}: same features? {same} - matched r = {g('matched_corr'):.2f} "
            f"[{lo:.2f}, {g('matched_corr', 'ci_images_hi'):.2f}] vs null {g('matched_corr', 'null_shuffled'):.2f} "
            f"(shuffled images) / {g('matched_corr', 'null_untrained'):.2f} (untrained); "
            f"{frac:.0%} of matched channels above the null's 95th percentile ({self.null95[layer]:.2f}); "
            f"CKA {g('cka_linear'):.2f} (debiased {g('cka_debiased'):.2f}, "
            f"untrained {g('cka_debiased', 'null_untrained'):.2f}).\n"
            f"  same order? {order} - {in_place:.1f} of {live:.0f} live channels stay in place "
            f"({chance:.1f} by chance); diagonal r = {g('diagonal_corr'):.2f} vs matched {g('matched_corr'):.2f}."
        )
        if "kernel_cosine" in tab.index:
            text += (
                f"\n  matched 3x3 kernels: cosine {g('kernel_cosine'):.2f} "
                f"(untrained {g('kernel_cosine', 'null_untrained'):.2f})."
            )
        if "oip_cross" in tab.index:
            text += (
                f"\n  OIPs of matched maps: similarity {g('oip_cross'):.2f} vs ceiling {g('oip_ceiling'):.2f} "
                f"(own restarts) and floor {g('oip_floor'):.2f} (random map pairs)."
            )
        return text

    def to_dict(self) -> dict:
        """Every number, JSON-ready (no NaN: undefined values are None)."""

        def clean(v):
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, np.ndarray):
                return clean(v.tolist())
            if isinstance(v, (np.floating, float)):
                return float(v) if math.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, np.bool_):
                return bool(v)
            return v

        out = {
            "config": dataclasses.asdict(self.config),
            "models": self.model_info,
            "pairs": [list(p) for p in self.pairs],
            "seconds": self.seconds,
            "backend": jax.default_backend(),
            "layers": {},
        }
        for layer in self.config.layers:
            lay = {
                "samples": {"images": self.samples[layer][0], "positions_per_image": self.samples[layer][1]},
                "null95_matched_corr": self.null95[layer],
                "dead_channels": {self.names[i]: int((~self.live[(layer, i)]).sum()) for i in range(len(self.names))},
                "table": self.table(layer).to_dict(orient="records"),
                "pairs": {},
                "image_bootstrap": {
                    c: self.image_bootstrap[(layer, c)].to_dict(orient="list")
                    for c in COMPARISONS
                    if (layer, c) in self.image_bootstrap
                },
            }
            t = self.pairs_table[self.pairs_table["layer"] == layer]
            for (c, a, b), g in t.groupby(["comparison", "a", "b"], sort=False):
                key = f"{self.names[a]} vs {self.names[b]}"
                d = self.details[(layer, c, (a, b))]
                lay["pairs"].setdefault(key, {})[c] = {
                    "metrics": dict(zip(g["metric"], g["value"])),
                    "matched_a": d["a"],
                    "matched_b": d["b"],
                    "matched_corr": d["corr"],
                }
            out["layers"][layer] = lay
        if self.oip:
            out["oip"] = {
                f"{self.names[a]} vs {self.names[b]}": {
                    k: v for k, v in o.items() if k not in ("images_a", "images_b")
                }
                for (a, b), o in self.oip.items()
            }
        return clean(out)


def untrained_models(template: TrainedModel, count: int, seed: int) -> list[TrainedModel]:
    """`count` freshly initialized networks of `template`'s architecture, keys disjoint from training seeds."""
    root = jax.random.fold_in(jax.random.key(seed), 0x0A7)
    return [
        TrainedModel(
            model=init_model(template.config, jax.random.fold_in(root, i)), standardization=template.standardization
        )
        for i in range(count)
    ]


def _model_info(trained: TrainedModel, name: str) -> dict:
    return {
        "name": name,
        "seed": trained.train_config.get("seed"),
        "epochs": trained.train_config.get("epochs"),
        "train_subset": trained.train_config.get("train_subset"),
        "test_accuracy": trained.metrics.get("test_accuracy"),
        "data_checksum": trained.data_checksum,
    }


def compare_models(
    models: Sequence[TrainedModel],
    data: MNIST,
    config: CompareConfig = CompareConfig(),
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> SeedComparison:
    """Compares every pair of `models` layer by layer, with both nulls and bootstrap CIs (see module doc)."""
    t_start = time.perf_counter()
    check_models(models, config.layers)
    names = tuple(names) if names is not None else tuple(f"model {i}" for i in range(len(models)))
    images = data.test_images[: config.test_subset] if config.test_subset else data.test_images
    n_images = images.shape[0]
    if n_images < 2:
        raise JaxoipError("need at least two test images")
    pairs = tuple(itertools.combinations(range(len(models)), 2))
    root = jax.random.key(config.seed)
    oip_key = jax.random.fold_in(root, 1)
    untrained = untrained_models(models[0], len(models), config.seed)
    rng = np.random.default_rng(config.seed)
    shuffle = rng.permutation(n_images)
    bounds = block_bounds(n_images, config.blocks)
    weights = rng.multinomial(len(bounds) - 1, np.full(len(bounds) - 1, 1.0 / (len(bounds) - 1)), size=config.bootstrap)
    weights = weights.astype(np.float64)
    ones = np.ones(len(bounds) - 1)
    first_conv = next(s.name for s in layer_specs(models[0].config) if s.kind == "conv")
    log = print if progress else (lambda *a, **k: None)

    rows, boots, details, correlations, live, null95, samples = [], {}, {}, {}, {}, {}, {}
    for li, layer in enumerate(config.layers):
        t0 = time.perf_counter()
        h, w, _ = layer_shapes(models[0].config)[layer]
        k = positions_per_image((h, w), n_images, config.max_samples)
        bs = max(1, min(500, n_images))
        positions = sample_positions(config.seed * 1000 + li, bs, h * w, k)
        samples[layer] = (n_images, k)

        def centered(trained):
            f = layer_features(trained, images, layer, positions, batch_size=bs)
            return f, (f - f.reshape(-1, f.shape[-1]).mean(0, dtype=np.float64)).astype(np.float32)

        feats, raw_live = [], []
        for m in models:
            raw, f = centered(m)
            raw_live.append(live_channels(raw))
            feats.append(f)
        ufeats, u_live = [], []
        for m in untrained:
            raw, f = centered(m)
            u_live.append(live_channels(raw))
            ufeats.append(f)
        for i, mask in enumerate(raw_live):
            live[(layer, i)] = mask
        self_m = [block_moments(f, f, bounds) for f in feats]
        self_shuf = [block_moments(f[shuffle], f[shuffle], bounds) for f in feats]
        self_u = [block_moments(f, f, bounds) for f in ufeats]
        kernels = None
        if layer == first_conv:
            kernels = [kernel_vectors(m, layer) for m in models], [kernel_vectors(m, layer) for m in untrained]

        def features_of(c, b):
            if c == "untrained":
                return ufeats[b]
            return feats[b][shuffle] if c == "shuffled" else feats[b]

        def side(c, b):
            """Second model's self moments, live mask and kernels for comparison c."""
            if c == "untrained":
                return self_u[b], u_live[b], None if kernels is None else kernels[1][b]
            moments = self_m[b] if c == "real" else self_shuf[b]
            return moments, raw_live[b], None if kernels is None else kernels[0][b]

        def evaluate(a, b, c, cross, wv, threshold):
            mb, live_b, kb = side(c, b)
            tx, ty, txy = weighted(self_m[a], wv), weighted(mb, wv), weighted(cross, wv)
            corr = correlation_from_totals(tx, ty, txy)
            ker = None if kernels is None else (kernels[0][a], kb)
            cka = cka_from_totals(tx, ty, txy)
            met, det = pair_metrics(corr, raw_live[a], live_b, cka, config.thresholds, threshold, ker)
            return met, det, corr

        # The shuffled pairs' matched correlations set the threshold of frac_above_null95 for all.
        shuffled_cross = {(a, b): block_moments(feats[a], features_of("shuffled", b), bounds) for a, b in pairs}
        pooled = [evaluate(a, b, "shuffled", shuffled_cross[(a, b)], ones, None)[1]["corr"] for a, b in pairs]
        pooled = np.concatenate(pooled)
        null95[layer] = threshold = float(np.quantile(pooled, 0.95)) if pooled.size else 0.0
        for c in COMPARISONS:
            per_pair_boot = []
            for a, b in pairs:
                if c == "shuffled":
                    cross = shuffled_cross.pop((a, b))
                else:
                    cross = block_moments(feats[a], features_of(c, b), bounds)
                met, det, corr = evaluate(a, b, c, cross, ones, threshold)
                details[(layer, c, (a, b))] = det
                correlations[(layer, c, (a, b))] = corr.astype(np.float32)
                rows += [dict(layer=layer, comparison=c, a=a, b=b, metric=k_, value=v) for k_, v in met.items()]
                per_pair_boot.append(pd.DataFrame([evaluate(a, b, c, cross, wv, threshold)[0] for wv in weights]))
            boots[(layer, c)] = sum(per_pair_boot) / len(per_pair_boot)
        log(f"{layer}: {n_images} images x {k} positions, {len(pairs)} pairs, {time.perf_counter() - t0:.1f} s")

    table = pd.DataFrame(rows)
    oip, oip_images, oip_objective = {}, {}, {}
    if config.oip_layer is not None:
        t0 = time.perf_counter()
        oip, oip_images, oip_objective = _compare_oips(models, pairs, details, config, oip_key, progress)
        extra = []
        for (a, b), o in oip.items():
            for k_ in ("cross", "ceiling", "floor", "same_start", "found"):
                row = dict(layer=config.oip_layer, comparison="real", a=a, b=b)
                extra.append(dict(row, metric=f"oip_{k_}", value=float(np.mean(o[k_]))))
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
        log(f"OIPs of {config.oip_layer}: {time.perf_counter() - t0:.1f} s")

    return SeedComparison(
        names=names,
        model_info=[_model_info(m, n) for m, n in zip(models, names)],
        pairs=pairs,
        config=config,
        pairs_table=table,
        image_bootstrap=boots,
        details=details,
        correlations=correlations,
        live=live,
        null95=null95,
        samples=samples,
        oip=oip,
        oip_images=oip_images,
        oip_objective=oip_objective,
        seconds=time.perf_counter() - t_start,
    )


def _compare_oips(models, pairs, details, config: CompareConfig, key, progress):
    """OIPs of selected matched maps, all maps of all models searched from the same `oip_restarts` starts."""
    layer, r = config.oip_layer, config.oip_restarts
    chosen = {}
    for a, b in pairs:
        d = details[(layer, "real", (a, b))]
        sel = select_oip_maps(d, config.oip_maps)
        chosen[(a, b)] = (d["a"][sel], d["b"][sel], d["corr"][sel])
    needed = {i: set() for i in range(len(models))}
    for (a, b), (ma, mb, _) in chosen.items():
        needed[a].update(int(x) for x in ma)
        needed[b].update(int(x) for x in mb)
    starts = np.asarray(initial_images(jax.random.split(key, r), [config.oip_recipe]))
    images, objective = {}, {}
    for i, maps in needed.items():
        maps = np.asarray(sorted(maps), np.int32)
        if maps.size == 0:
            continue
        res = search_oips(
            models[i].model, layer, np.repeat(maps, r), np.tile(starts, (len(maps), 1, 1, 1)), config.oip,
            progress=progress,
        )
        for j, m in enumerate(maps):
            images[(i, int(m))] = res.images[j * r : (j + 1) * r]
            objective[(i, int(m))] = res.objective[j * r : (j + 1) * r]
    out = {}
    for (a, b), (ma, mb, corr) in chosen.items():
        ia = np.stack([images[(a, int(m))] for m in ma])
        ib = np.stack([images[(b, int(m))] for m in mb])
        sim = oip_similarity(ia, ib)
        found = np.asarray(
            [(objective[(a, int(x))].max() > 0) & (objective[(b, int(y))].max() > 0) for x, y in zip(ma, mb)]
        )
        out[(a, b)] = dict(maps_a=ma, maps_b=mb, corr=corr, found=found, **sim)
    return out, images, objective


# ---------------------------------------------------------------------------------------------------
# Figures and the report


def plot_matching(result: SeedComparison, layer: str, pair=None, path=None):
    """Correlation matrix of one pair (live channels) in the original order and after matching."""
    from jaxoip import plots

    plt = plots.plt
    pair = tuple(pair) if pair is not None else result.pairs[0]
    a, b = pair
    corr = result.correlations[(layer, "real", pair)]
    la, lb = result.live[(layer, a)], result.live[(layer, b)]
    before = corr[np.ix_(np.flatnonzero(la), np.flatnonzero(lb))]
    d = result.details[(layer, "real", pair)]
    order = np.argsort(-d["corr"])
    after = corr[np.ix_(d["a"][order], d["b"][order])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, m, title in (
        (axes[0], before, "original channel order"),
        (axes[1], after, "after Hungarian matching (sorted by matched r)"),
    ):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set(title=title, xlabel=f"{result.names[b]} channel", ylabel=f"{result.names[a]} channel")
        ax.title.set_fontsize(9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="Pearson r")
    fig.suptitle(f"{layer}: {result.names[a]} vs {result.names[b]}, test-set activations", fontsize=10)
    if path is not None:
        plots.save_figure(fig, path)
    return fig


def plot_matched_oips(result: SeedComparison, pair=None, max_maps: int = 8, path=None):
    """Best OIP (over restarts) of matched maps side by side, with their activation and OIP similarity."""
    from jaxoip import plots

    plt = plots.plt
    pair = tuple(pair) if pair is not None else result.pairs[0]
    a, b = pair
    o = result.oip[pair]
    n = min(max_maps, len(o["maps_a"]))
    fig, axes = plt.subplots(2, n, figsize=(1.5 * n + 0.5, 4.4), squeeze=False)
    for j in range(n):
        for row, (model, m) in enumerate(((a, o["maps_a"][j]), (b, o["maps_b"][j]))):
            imgs, obj = result.oip_images[(model, int(m))], result.oip_objective[(model, int(m))]
            ax = axes[row, j]
            ax.imshow(plots.enhance_contrast(imgs[int(np.argmax(obj))][..., 0]), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"map {int(m)}", fontsize=7)
        axes[1, j].set_xlabel(f"r={o['corr'][j]:.2f}\nOIP sim {o['cross'][j]:.2f}", fontsize=7)
    axes[0, 0].set_ylabel(result.names[a], fontsize=8)
    axes[1, 0].set_ylabel(result.names[b], fontsize=8)
    fig.suptitle(
        f"{result.config.oip_layer}: best OIPs of matched maps (contrast-enhanced); "
        f"ceiling {np.mean(o['ceiling']):.2f}, floor {np.mean(o['floor']):.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    if path is not None:
        plots.save_figure(fig, path)
    return fig


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


METRIC_TEXT = {
    "live_a": "live channels, first model",
    "live_b": "live channels, second model",
    "dead_a": "dead channels, first model",
    "dead_b": "dead channels, second model",
    "matched_corr": "mean matched r (Hungarian)",
    "diagonal_corr": "mean r, same channel index",
    "in_place": "channels matched to their own index",
    "in_place_chance": "... expected by chance",
    "semi_corr": "mean best-partner r (semi-matching)",
    "semi_duplicates": "channels sharing a best partner",
    "frac_above_null95": "fraction matched r > null's 95th pct",
    "cka_linear": "linear CKA",
    "cka_debiased": "linear CKA, debiased",
    "kernel_cosine": "cosine of matched 3x3 kernels",
    "oip_cross": "OIP similarity, matched maps",
    "oip_ceiling": "OIP similarity, own restarts (ceiling)",
    "oip_floor": "OIP similarity, random map pairs (floor)",
    "oip_same_start": "OIP similarity, matched maps, same start",
    "oip_found": "fraction of matched pairs with both OIPs found",
}


def markdown_report(result: SeedComparison, command: str | None = None) -> str:
    cfg = result.config
    lines = ["# Seed comparison: the same filters, in the same order?", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["| model | seed | epochs | train subset | test accuracy |", "|---|---|---|---|---|"]
    for m in result.model_info:
        acc = m["test_accuracy"]
        lines.append(
            f"| {m['name']} | {m['seed']} | {m['epochs']} | {m['train_subset'] or 'all'} | "
            f"{'n/a' if acc is None else f'{acc:.4f}'} |"
        )
    lines += [
        "",
        f"{len(result.pairs)} pairs. Features: post-ReLU activations on the test images, spatial positions as samples. "
        f"Nulls: **shuffled** = the same pair with the test images shuffled for the second model; "
        f"**untrained** = the first model against an untrained network of the same architecture. "
        f"CIs ({cfg.ci:.0%}): bootstrap over images ({cfg.bootstrap} replicates of {cfg.blocks} image blocks) and "
        f"over seed pairs (pairs sharing a model are not independent: read it as a rough spread). "
        f"Dead channels (constant on the samples) are left out of every matching.",
        "",
    ]
    for layer in cfg.layers:
        n, k = result.samples[layer]
        lines += [f"## {layer}", "", f"{n} images x {k} positions = {n * k} samples; "
                  f"null 95th percentile of matched r: {result.null95[layer]:.3f}.", ""]
        lines += ["```", result.headline(layer), "```", ""]
        lines += [
            "| metric | mean over pairs | CI (images) | CI (seed pairs) | null: shuffled | null: untrained |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in result.table(layer).iterrows():
            name = METRIC_TEXT.get(r["metric"], r["metric"].replace("frac_above_", "fraction matched r > "))
            ci_i = f"[{_fmt(r['ci_images_lo'])}, {_fmt(r['ci_images_hi'])}]"
            ci_i = ci_i if math.isfinite(r["ci_images_lo"]) else "n/a"
            ci_p = f"[{_fmt(r['ci_pairs_lo'])}, {_fmt(r['ci_pairs_hi'])}]"
            lines.append(
                f"| {name} | {_fmt(r['mean'])} | {ci_i} | {ci_p} | "
                f"{_fmt(r['null_shuffled'])} | {_fmt(r['null_untrained'])} |"
            )
        lines += ["", f"![{layer} correlation before and after matching](corr_{layer}.png)", ""]
    if result.oip:
        lines += [
            f"## OIPs of matched {cfg.oip_layer} maps",
            "",
            f"{cfg.oip_maps} matched maps per pair (evenly spaced in the ranking of matched r), {cfg.oip_restarts} "
            f"shared starts ('{cfg.oip_recipe}' recipe), {cfg.oip.steps} steps. Similarity: pixel correlation, "
            f"averaged over pairs of different starts.",
            "",
            f"![matched OIPs](oips_{cfg.oip_layer}.png)",
            "",
        ]
    return "\n".join(lines) + "\n"


def write_report(result: SeedComparison, out: str | os.PathLike, command: str | None = None, overwrite: bool = False) -> Path:
    """Writes the report into the new or empty folder `out` (see `write_report_files`), as `jaxoip._io.prepare_output`."""
    with prepare_output(out, "write_report", {}, overwrite=overwrite) as o:
        write_report_files(result, o.staging, command)
    return o.path


def write_report_files(result: SeedComparison, folder: str | os.PathLike, command: str | None = None) -> None:
    """Writes report.md, results.json, metrics.csv (per pair), correlations.npz and figures into `folder`."""
    tmp = Path(folder)
    (tmp / "report.md").write_text(markdown_report(result, command))
    (tmp / "results.json").write_text(json.dumps(result.to_dict(), indent=1))
    result.pairs_table.to_csv(tmp / "metrics.csv", index=False)
    arrays = {
        f"{layer}__{c}__{result.names[a]}__{result.names[b]}".replace(" ", "_"): v
        for (layer, c, (a, b)), v in result.correlations.items()
    }
    np.savez_compressed(tmp / "correlations.npz", **arrays)
    for layer in result.config.layers:
        plot_matching(result, layer, path=tmp / f"corr_{layer}.png")
    if result.oip:
        plot_matched_oips(result, path=tmp / f"oips_{result.config.oip_layer}.png")
