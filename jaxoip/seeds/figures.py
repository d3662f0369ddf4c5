"""Figures of the seed comparison, drawn with matplotlib's object API (no global backend, no pyplot state).

Each function returns a `matplotlib.figure.Figure` (shown inline by notebooks) and saves it when given a path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from jaxoip.figures import display_planes, enhance_contrast, new_figure, save_figure, show_image

if TYPE_CHECKING:
    from jaxoip.seeds.result import SeedComparison

# (measure key, title) of the OIP measures figure.
OIP_MEASURES = (
    ("shift", "shift-invariant r"),
    ("shift_unsigned", "shift-invariant |r| (sign-free)"),
    ("xact", "cross-activation"),
    ("pixel", "pixel r"),
)


def plot_matching(result: SeedComparison, layer: str, pair=None, path=None) -> Figure:
    """Correlation matrix of one pair (live channels) in the original order and after matching."""
    pair = tuple(pair) if pair is not None else result.pairs[0]
    a, b = pair
    corr = result.correlations[(layer, "real", pair)]
    la, lb = result.live[(layer, a)], result.live[(layer, b)]
    before = corr[np.ix_(np.flatnonzero(la), np.flatnonzero(lb))]
    d = result.details[(layer, "real", pair)]
    order = np.argsort(-d["corr"])
    after = corr[np.ix_(d["a"][order], d["b"][order])]
    fig = new_figure((10, 4.6))
    axes = fig.subplots(1, 2)
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
        save_figure(fig, path)
    return fig


def _best_image(result: SeedComparison, model: int, map_index: int) -> np.ndarray:
    """The OIP of the live start with the highest objective (any start if none is live)."""
    key = (model, int(map_index))
    obj = np.asarray(result.oip_objective[key], np.float64)
    live = result.oip_live.get(key, obj > 0)
    return result.oip_images[key][int(np.argmax(np.where(live, obj, -np.inf) if live.any() else obj))]


def plot_matched_oips(result: SeedComparison, pair=None, max_maps: int = 8, path=None) -> Figure:
    """Best OIP of matched maps side by side, each column labelled with the maps' activation r and OIP measures."""
    pair = tuple(pair) if pair is not None else result.pairs[0]
    a, b = pair
    o = result.oip[pair]
    n = min(max_maps, len(o["maps_a"]))
    fig = new_figure((1.6 * n + 0.6, 4.8))
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for row, (model, m) in enumerate(((a, o["maps_a"][j]), (b, o["maps_b"][j]))):
            ax = axes[row, j]
            show_image(ax, enhance_contrast(display_planes(_best_image(result, model, m))))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"map {int(m)}", fontsize=7)
        label = f"r={o['corr'][j]:.2f}\nshift {o['shift'][j]:.2f}\nxact {o['xact'][j]:.2f}"
        if not o["both_live"][j]:
            label = f"r={o['corr'][j]:.2f}\nsilent: left out"
        axes[1, j].set_xlabel(label.replace("nan", "n/a"), fontsize=7)
    axes[0, 0].set_ylabel(result.names[a], fontsize=8)
    axes[1, 0].set_ylabel(result.names[b], fontsize=8)
    both = np.asarray(o["both_live"], bool)
    ceil = np.nanmean(np.asarray(o["shift_ceiling"])[both]) if both.any() else np.nan
    floor = np.nanmean(np.asarray(o["shift_floor"])[both]) if both.any() else np.nan
    fig.suptitle(
        f"{result.config.oip_layer}: best OIPs of matched maps (contrast-enhanced); "
        f"shift-invariant r ceiling {ceil:.2f}, floor {floor:.2f}".replace("nan", "n/a"),
        fontsize=9,
    )
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_oip_measures(result: SeedComparison, path=None) -> Figure:
    """Every OIP measure of every pair and matched map (dots), against each pair's ceiling and floor (bars)."""
    measures = [(k, t) for k, t in OIP_MEASURES if any(k in o for o in result.oip.values())]
    fig = new_figure((3.2 * len(measures) + 0.6, 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(measures), sharey=False))
    rng = np.random.default_rng(0)
    labels = [f"{result.names[a]}\nvs {result.names[b]}" for a, b in result.pairs]
    for ax, (key, title) in zip(axes, measures):
        for x, pair in enumerate(result.pairs):
            o = result.oip[pair]
            both = np.asarray(o["both_live"], bool)
            v = np.asarray(o[key], np.float64)[both]
            ax.scatter(
                x + rng.uniform(-0.15, 0.15, v.size),
                v,
                s=9,
                color="C0",
                alpha=0.7,
                label="matched maps" if x == 0 else None,
            )
            for suffix, color, name in (
                ("ceiling", "C2", "ceiling: own restarts"),
                ("floor", "C3", "floor: random map pairs"),
            ):
                w = np.asarray(o[f"{key}_{suffix}"], np.float64)[both]
                w = w[np.isfinite(w)]
                if w.size:
                    ax.hlines(w.mean(), x - 0.3, x + 0.3, color=color, lw=2, label=name if x == 0 else None)
        ax.set_xticks(range(len(result.pairs)), labels, fontsize=6, rotation=90 if len(labels) > 4 else 0)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{result.config.oip_layer}: OIPs of matched maps, every pair (silent starts left out)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
