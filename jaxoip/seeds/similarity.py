"""Similarity of two sets of channel features: correlation, linear CKA, matching and semi-matching.

Every statistic is a function of per-block sufficient statistics (sums and cross-products of the
features over blocks of samples), so a bootstrap replicate over blocks is a weighted sum of blocks,
not another pass over the data. Features are (samples, channels) arrays, or (images, k, channels)
with k samples per image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import ArrayLike, Float, Int
from scipy.optimize import linear_sum_assignment

_EPS = 1e-12


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
    for lo, hi in itertools.pairwise(bounds):
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


def linear_cka(x: Float[ArrayLike, "samples c_a"], y: Float[ArrayLike, "samples c_b"], debiased: bool = False) -> float:
    """Linear CKA of features x (n, dx) and y (n, dy) (samples in rows), biased or debiased."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    b, d = cka_from_totals(_moments_of(x, x), _moments_of(y, y), _moments_of(x, y))
    return d if debiased else b


def correlation_matrix(
    x: Float[ArrayLike, "samples c_a"], y: Float[ArrayLike, "samples c_b"]
) -> Float[np.ndarray, "c_a c_b"]:
    """Pearson correlation of the channels of x (n, dx) and y (n, dy); 0 for constant channels."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return correlation_from_totals(_moments_of(x, x), _moments_of(y, y), _moments_of(x, y))


def match_channels(corr: Float[np.ndarray, "c_a c_b"]) -> tuple[Int[np.ndarray, " pairs"], Int[np.ndarray, " pairs"]]:
    """Hungarian matching (rows, cols) maximizing the summed correlation; min(dx, dy) pairs."""
    rows, cols = linear_sum_assignment(np.asarray(corr), maximize=True)
    return rows, cols


def semi_match(corr: Float[np.ndarray, "c_a c_b"]) -> tuple[Int[np.ndarray, " c_a"], int]:
    """Each row's best column, and how many rows share a best column with another (duplicates)."""
    best = np.argmax(corr, axis=1)
    return best, int(len(best) - len(np.unique(best)))


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
