"""How alike two sets of optimal input patterns (OIPs) are: pixel, shift-invariant and cross-activation measures.

OIPs come as (maps, restarts, H, W, 1) arrays, map i of one set matched to map i of the other, with
`live` masks (maps, restarts) that leave out starts whose search never woke the map: a silent start's
image is noise and says nothing about the map. Every measure has a ceiling (a map against its own
restarts) and a floor (a map against the partners of the other maps); a value that no live start
defines is NaN, and callers leave it out of their means.

- pixel: the Pearson correlation of the two images.
- shift: the maximum over translations |dy|, |dx| <= max_shift of the Pearson correlation over the
  overlap of the two images (normalized cross-correlation, computed with FFTs). A pattern and its
  translated copy score 1; so does a copy with its contrast scaled or offset. `shift_unsigned` takes the
  maximum of |r|, so a contrast-inverted copy also scores 1 (the study's stripes in opposite phase).
- cross-activation: how strongly map j of model b responds (mean of the map, the search's objective)
  to model a's OIPs of its matched map, relative to its mean response to its own OIPs (1: as strongly
  as to its own).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from jaxoip.numerics import FAST_COMPILE, fetch

_EPS = 1e-12


def masked_mean(values: np.ndarray, mask: np.ndarray, axis) -> np.ndarray:
    """Mean of `values` where `mask`, over `axis`; NaN where the mask is empty."""
    total = np.sum(np.where(mask, values, 0.0), axis=axis)
    count = np.sum(mask, axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def restart_pair_means(
    s_ab: np.ndarray, s_aa: np.ndarray, s_bb: np.ndarray, live_a: np.ndarray, live_b: np.ndarray
) -> dict[str, np.ndarray]:
    """Per matched map i: `cross`, `ceiling` and `floor` from similarity arrays over (map, restart) pairs.

    `s_ab[i, r, j, s]` is the similarity of OIP (i, r) of a and OIP (j, s) of b; `s_aa`, `s_bb` the same
    within a side. Pairs of equal restart index (r == s) are left out everywhere, because with shared
    starts they share their start image. cross[i]: map i of a against map i of b; ceiling[i]: map i
    against its own other restarts, mean of both sides; floor[i]: map i of a against the partners in b
    of the other maps. Only live starts count.
    """
    m, r = live_a.shape
    off = ~np.eye(r, dtype=bool)[None, :, None, :]
    w_ab = live_a[:, :, None, None] & live_b[None, None, :, :] & off
    per_ij_sum = np.sum(np.where(w_ab, s_ab, 0.0), axis=(1, 3))  # (m, m)
    per_ij_n = np.sum(w_ab, axis=(1, 3))
    diag = np.eye(m, dtype=bool)
    cross = np.where(np.diag(per_ij_n) > 0, np.diag(per_ij_sum) / np.maximum(np.diag(per_ij_n), 1), np.nan)
    f_sum, f_n = np.where(diag, 0.0, per_ij_sum).sum(1), np.where(diag, 0, per_ij_n).sum(1)
    floor = np.where(f_n > 0, f_sum / np.maximum(f_n, 1), np.nan)

    def own(s, live):
        s_ii = s[np.arange(m), :, np.arange(m), :]  # (m, r, r)
        return masked_mean(s_ii, live[:, :, None] & live[:, None, :] & ~np.eye(r, dtype=bool), axis=(1, 2))

    sides = np.stack([own(s_aa, live_a), own(s_bb, live_b)])
    ceiling = masked_mean(np.nan_to_num(sides), ~np.isnan(sides), axis=0)
    return {"cross": cross, "ceiling": ceiling, "floor": floor}


def pixel_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) Pearson correlations of images a (N, H, W, 1) and b (M, H, W, 1)."""

    def unit(x):
        f = x.reshape(x.shape[0], -1).astype(np.float64)
        f = f - f.mean(-1, keepdims=True)
        return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), _EPS)

    return unit(a) @ unit(b).T


def _shift_window(size: int, max_shift: int) -> np.ndarray:
    """FFT indices of the shifts -max_shift..max_shift (negative shifts wrap to the end)."""
    return np.arange(-max_shift, max_shift + 1) % size


def _side_sums(x: jax.Array, ones_f: jax.Array, size: int, left: bool):
    """Spectrum of images x (N, H, W) or planes (N, C, H, W), and their sums and sums of squares over the
    overlap at every shift (over all channels)."""
    spec = jnp.fft.rfft2(x, s=(size, size))
    spec2 = jnp.fft.rfft2(x**2, s=(size, size))
    if x.ndim == 4:  # The sums are linear in the spectra: add the channels' before transforming back.
        spec_sum, spec2_sum = spec.sum(axis=1), spec2.sum(axis=1)
    else:
        spec_sum, spec2_sum = spec, spec2
    ones_f = ones_f[None]
    if left:  # Sum over y of x(y) 1(y + d inside): correlation of x with the window.
        s1, s2 = jnp.conj(spec_sum) * ones_f, jnp.conj(spec2_sum) * ones_f
    else:  # Sum over y of 1(y inside) x(y + d).
        s1, s2 = jnp.conj(ones_f) * spec_sum, jnp.conj(ones_f) * spec2_sum
    return spec, jnp.fft.irfft2(s1, s=(size, size)), jnp.fft.irfft2(s2, s=(size, size))


@functools.partial(jax.jit, static_argnames=("max_shift",), compiler_options=FAST_COMPILE)
def shift_similarity_matrix(
    a: Float[ArrayLike, "n_a H W ch"], b: Float[ArrayLike, "n_b H W ch"], max_shift: int = 7
) -> tuple[Float[Array, "n_a n_b"], Float[Array, "n_a n_b"]]:
    """(N, M) maximum over shifts of the normalized cross-correlation of images a (N, H, W, C) and b (M, H, W, C)
    (colour: over all channels, shifted together).

    For every shift d with |dy|, |dx| <= max_shift, the Pearson correlation of a(y) and b(y + d) over
    the overlap of the two images (at least (H - max_shift) x (W - max_shift) pixels). Returns
    (signed, unsigned): the maximum of r, and the maximum of |r| (sign change allowed). Zero-padded
    FFTs of size H + max_shift give every shift without wrap-around.
    """
    return traced_shift_similarity(a, b, max_shift)


def traced_shift_similarity(a, b, max_shift: int):
    """`shift_similarity_matrix`'s computation, not jitted itself: traced inside the programs that call it
    (`jaxoip.oip.two_choice.observer_similarity`; a nested jit could not take `FAST_COMPILE`)."""
    h, w = a.shape[1], a.shape[2]
    if not 0 <= max_shift < min(h, w):
        raise ValueError(f"max_shift must be in 0..{min(h, w) - 1}, got {max_shift}")
    size = max(h, w) + max_shift
    channels = a.shape[3] if a.ndim == 4 else 1
    if channels == 1:
        a = jnp.asarray(a, jnp.float32).reshape(a.shape[0], h, w)
        b = jnp.asarray(b, jnp.float32).reshape(b.shape[0], h, w)
        axes = (1, 2)
    else:  # Colour: planes (N, C, H, W), their sums taken over the channels too.
        a = jnp.moveaxis(jnp.asarray(a, jnp.float32), -1, 1)
        b = jnp.moveaxis(jnp.asarray(b, jnp.float32), -1, 1)
        axes = (1, 2, 3)
    # Centering each image conditions the sums; the correlation over any overlap does not change.
    a = a - a.mean(axis=axes, keepdims=True)
    b = b - b.mean(axis=axes, keepdims=True)
    ones_f = jnp.fft.rfft2(jnp.ones((h, w), jnp.float32), s=(size, size))
    count = jnp.fft.irfft2(jnp.conj(ones_f) * ones_f, s=(size, size)) * channels
    fa, sa, sa2 = _side_sums(a, ones_f, size, left=True)
    fb, sb, sb2 = _side_sums(b, ones_f, size, left=False)
    idx = _shift_window(size, max_shift)

    def win(x):
        return x[..., idx[:, None], idx[None, :]]

    sb, sb2 = win(sb), win(sb2)
    n = jnp.maximum(jnp.round(win(count)), 1.0)[None]  # (1, 2K+1, 2K+1) pixels in the overlap
    var_b = jnp.maximum(sb2 - sb**2 / n, 0.0)

    def row(args):
        fa_i, sa_i, sa2_i = args
        cross = jnp.conj(fa_i)[None] * fb
        cross = cross if channels == 1 else cross.sum(axis=1)  # Colour: summed over the channels.
        sab = win(jnp.fft.irfft2(cross, s=(size, size)))  # (M, 2K+1, 2K+1)
        sa_i, sa2_i = win(sa_i)[None], win(sa2_i)[None]
        var_a = jnp.maximum(sa2_i - sa_i**2 / n, 0.0)
        den = jnp.sqrt(var_a * var_b)
        ok = den > 1e-6 * n
        r = jnp.where(ok, (sab - sa_i * sb / n) / jnp.where(ok, den, 1.0), 0.0)
        r = jnp.clip(r, -1.0, 1.0)
        return r.max(axis=(1, 2)), jnp.abs(r).max(axis=(1, 2))

    return jax.lax.map(row, (fa, sa, sa2))


def shift_similarity(a, b, max_shift: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Paired version: (signed, unsigned) similarity of a[p] and b[p], images (P, H, W, 1)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    out = [shift_similarity_matrix(a[p : p + 1], b[p : p + 1], max_shift) for p in range(a.shape[0])]
    out = fetch(out)
    return np.asarray([o[0][0, 0] for o in out]), np.asarray([o[1][0, 0] for o in out])


def similar_maps(
    best_images: Float[np.ndarray, "m H W C"], k: int = 5
) -> tuple[Int[np.ndarray, "m k"], Float[np.ndarray, "m k"]]:
    """For each map, the positions of the `k` maps whose best OIPs are most alike (shift-invariant correlation,
    `shift_similarity_matrix`) and those correlations, most similar first."""
    x = np.asarray(best_images, np.float32)
    x = x.mean(axis=-1, keepdims=True)  # Colour OIPs compared by their brightness.
    n = x.shape[0]
    if n < 2:
        return np.zeros((n, 0), int), np.zeros((n, 0))
    sim = fetch(shift_similarity_matrix(x, x, min(7, x.shape[1] - 1))[0]).astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, : min(k, n - 1)]
    return order, np.take_along_axis(sim, order, axis=1)


def oip_similarities(
    oips_a: np.ndarray, oips_b: np.ndarray, live_a: np.ndarray, live_b: np.ndarray, max_shift: int = 7
) -> dict[str, np.ndarray]:
    """Pixel and shift-invariant similarity of matched maps' OIPs (maps, restarts, H, W, 1), with ceilings
    and floors (see `restart_pair_means`); keys `<measure>` `<measure>_ceiling` `<measure>_floor` for
    measure in pixel, shift, shift_unsigned, plus `pixel_same_start` (matched maps, same restart index)."""
    m, r = oips_a.shape[:2]
    flat_a, flat_b = oips_a.reshape(m * r, *oips_a.shape[2:]), oips_b.reshape(m * r, *oips_b.shape[2:])
    shape = (m, r, m, r)
    out = {}
    pix = {
        k: pixel_similarity_matrix(x, y).reshape(shape)
        for k, (x, y) in {"ab": (flat_a, flat_b), "aa": (flat_a, flat_a), "bb": (flat_b, flat_b)}.items()
    }
    sh = {
        k: [v.astype(np.float64).reshape(shape) for v in fetch(shift_similarity_matrix(x, y, max_shift))]
        for k, (x, y) in {"ab": (flat_a, flat_b), "aa": (flat_a, flat_a), "bb": (flat_b, flat_b)}.items()
    }
    for name, mats in (
        ("pixel", pix),
        ("shift", {k: v[0] for k, v in sh.items()}),
        ("shift_unsigned", {k: v[1] for k, v in sh.items()}),
    ):
        res = restart_pair_means(mats["ab"], mats["aa"], mats["bb"], live_a, live_b)
        out[name], out[f"{name}_ceiling"], out[f"{name}_floor"] = res["cross"], res["ceiling"], res["floor"]
    same = pix["ab"][np.arange(m), :, np.arange(m), :][:, np.arange(r), np.arange(r)]  # (m, r)
    out["pixel_same_start"] = masked_mean(same, live_a & live_b, axis=1)
    return out


def cross_activation(
    response: Float[np.ndarray, "m r m"],
    own: Float[np.ndarray, "m r_b"],
    live_a: Bool[np.ndarray, "m r"],
    live_b: Bool[np.ndarray, "m r_b"],
) -> dict[str, Float[np.ndarray, " m"]]:
    """Model b's matched maps' response to model a's OIPs, relative to their response to b's own OIPs.

    `response[i, r, j]`: map j of b (the partner of a's map i) on a's OIP (i, r); `own[j, s]`: map j of b
    on b's own OIP (j, s); both the search's objective (mean of the map). Per matched map j:
    `cross` = mean over a's live starts of response[j, r, j] / mean over b's live starts of own[j, s];
    `floor` = the same for a's OIPs of the other maps i != j; `ceiling` = b's own restarts, each against
    the mean of the other live ones (1 up to the spread of the restarts; needs 2 live starts).
    """
    m = live_a.shape[0]
    base = masked_mean(own, live_b, axis=1)  # (m,)
    base = np.where(base > 0, base, np.nan)
    mine = response[np.arange(m), :, np.arange(m)]  # (m, r)
    cross = masked_mean(mine, live_a, axis=1) / base
    others = live_a[:, :, None] & ~np.eye(m, dtype=bool)[:, None, :]  # (i, r, j)
    floor = masked_mean(response, others, axis=(0, 1)) / base
    total, count = np.sum(np.where(live_b, own, 0.0), 1, keepdims=True), live_b.sum(1, keepdims=True)
    loo = (total - own) / np.maximum(count - 1, 1)  # Mean of the other live starts.
    ok = live_b & (count > 1) & (loo > 0)
    ceiling = masked_mean(own / np.where(ok, loo, 1.0), ok, axis=1)
    return {"cross": cross, "ceiling": ceiling, "floor": floor}


def select_oip_maps(detail: dict, k: int) -> np.ndarray:
    """Positions in the matching of `k` matched pairs evenly spaced in the ranking of their correlation."""
    order = np.argsort(-detail["corr"])
    if len(order) <= k:
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]
