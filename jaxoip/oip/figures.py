"""Figures of a scan's OIPs, drawn with matplotlib's object API (`jaxoip.figures`): the gallery of every map's
best OIP (with its facets and the test images' most active patches) and one map's snapshot strip."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from jaxoip.figures import (
    display_planes,
    enhance_contrast,
    exemplar_shades,
    image_data,
    new_figure,
    save_figure,
    show_image,
    tile_mosaic,
)


def _pad_to(patch, h: int, w: int) -> np.ndarray:
    """A patch (fh, fw[, 3]) centred in an (h, w[, 3]) tile of NaN."""
    patch = np.asarray(patch, np.float32)[:h, :w]
    out = np.full((h, w, *patch.shape[2:]), np.nan, np.float32)
    y, x = (h - patch.shape[0]) // 2, (w - patch.shape[1]) // 2
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


def oip_gallery(
    result, path=None, per_row: int | None = None, exemplars=None, facets=None, max_facets: int = 3
) -> Figure:
    """All maps' best OIPs, each plain (pixel units) and contrast-enhanced, labelled by target and objective.

    Colour images are drawn in colour: the plain OIP in pixels clipped to 0..255, the enhanced views
    stretched channel by channel. `facets`: optional list (in `result.map_indices` order) of standardized
    images (F, H, W, C) of each map's facets, best first (`jaxoip.oip.scan_result.facet_images`); up to
    `max_facets` further facets are drawn contrast-enhanced after the best OIP, and the label gives the facet
    count. `exemplars`: optional {map index: array (k, h, w[, C])} of dataset patches (pixel units) drawn to
    the right with the same grey scale as `plot_exemplars` and the plain OIP (white = bright pixel, as in
    MNIST); a map dead on the data has none and is labelled so. One mosaic image, one `imshow`.
    """
    best = display_planes(result.best_images)
    raw = display_planes(result.standardization.to_pixels(result.best_images))
    outside = float(np.mean((raw < 0) | (raw > 255)))  # Shown clipped: these pixels are not what was optimized.
    pixels = np.clip(raw, 0, 255) / 255.0
    objective = result.objective.max(axis=1)
    maps = result.map_indices
    labels = result.labels
    data_max = getattr(result, "data_max", None)
    dead = (
        (data_max[maps] <= 0) & getattr(result, "can_be_dead", True)
        if data_max is not None
        else np.zeros(len(maps), bool)
    )
    exemplars = exemplars or {}
    k = max((len(v) for v in exemplars.values()), default=0)
    more = [display_planes(np.asarray(f)[1 : 1 + max_facets]) for f in facets] if facets is not None else []
    n_more = max((len(f) for f in more), default=0)
    h, w = best.shape[1:3]
    blank = np.full(best.shape[1:], np.nan, np.float32)
    panels = 2 + n_more + k
    per_row = per_row or max(1, min(8, 44 // panels))  # Blocks per row: about 44 tiles across.
    # One block per map: plain, enhanced, then its exemplar patches, side by side.
    blocks = []
    for n, m in enumerate(maps):
        tiles = [pixels[n], enhance_contrast(best[n])]
        if n_more:
            extra = [enhance_contrast(f) for f in more[n]]
            tiles += extra + [blank] * (n_more - len(extra))
        patches = list(exemplars.get(int(m), []))
        dead[n] |= int(m) in exemplars and not patches  # No patch activates it: dead on the data.
        tiles += [_pad_to(exemplar_shades(p), h, w) for p in patches]
        tiles += [blank] * (panels - len(tiles))
        blocks.append(tile_mosaic(tiles, panels, gap=1))
    label_px = 9
    cols = min(per_row, len(maps))
    mosaic = tile_mosaic(blocks, cols, gap=4, top=label_px)
    bh, bw = blocks[0].shape[:2]
    # Inches per mosaic pixel: 0.016 for a wide gallery; a few maps (a dense layer, a class target) get
    # larger thumbnails, up to 0.05 (a 28-pixel tile 1.4 inches wide), about 5 inches in all.
    scale = float(np.clip(5.0 / mosaic.shape[1], 0.016, 0.05))
    width = max(mosaic.shape[1] * scale, 4.0)  # Room for the title, which wraps to the width.
    title = (
        f"Optimal input patterns of {result.layer_name}: plain and contrast-enhanced"
        + (
            f" (plain: pixels clipped to 0-255, where {outside:.1%} of them lie outside, so a plain image does "
            "not give the objective printed beside it)"
            if outside > 0
            else ""
        )
        + (f", then up to {max_facets} further facets (distinct patterns)" if n_more else "")
        + (", beside the test images' most active patches" if k else "")
    )
    # Wrapped to the width: about 12 characters per inch at 10 points.
    title = textwrap.fill(title, max(30, int(width * 12)), break_on_hyphens=False)
    title_in = 0.25 + 0.18 * (title.count("\n") + 1)
    fig = new_figure((width, mosaic.shape[0] * scale + title_in))
    ax = fig.add_axes((0, 0, 1, mosaic.shape[0] * scale / fig.get_figheight()))
    show_image(ax, mosaic, interpolation="nearest")
    ax.set_axis_off()
    for n in range(len(maps)):
        r, c = divmod(n, cols)
        status = f"{objective[n]:.3g}" if objective[n] > 0 else "zero"
        if facets is not None:
            status += f", {len(facets[n])} facet{'s' if len(facets[n]) != 1 else ''}"
        if dead[n]:
            status += ", dead on data"
        y = r * (bh + 4 + label_px) + label_px - 1.5
        ax.text(c * (bw + 4), y, f"{labels[n]}: {status}", fontsize=6, va="bottom")
    fig.text(0.5, 1 - 0.5 * title_in / fig.get_figheight(), title, ha="center", va="center", fontsize=10)
    if path is not None:
        save_figure(fig, path, tight=False)
    return fig


def snapshot_strip(result, map_index: int, path=None) -> Figure:
    """The best start of one map at the log-spaced snapshot steps, with its objective trace.

    Laid out by hand, the snapshots as one mosaic: one image axes and one plot, where an axes per snapshot and a
    tight layout cost most of a scan's figure time.
    """
    strip = _Strip(result)
    strip.show(map_index)
    if path is not None:
        save_figure(strip.fig, path, tight=False)
    return strip.fig


def write_snapshot_strips(result, map_indices, folder) -> list[Path]:
    """`snapshot_strip` of each map in `map_indices`, written as `folder`/snapshots_map005.png, ...

    One figure redrawn for every map, the same pixels as a figure each: its axes, tick marks, text layouts and
    renderer are made once, where a new figure per map spent most of its time making them again.
    """
    strip = _Strip(result) if len(map_indices) else None
    if strip is not None:
        FigureCanvasAgg(strip.fig)  # Its own canvas: savefig would make a new one, and a new renderer, each time.
    paths = []
    for m in map_indices:
        strip.show(int(m))
        paths.append(save_figure(strip.fig, Path(folder) / f"snapshots_map{int(m):03d}.png", tight=False))
    return paths


class _Strip:
    """The snapshot strip's figure for `result` laid out once (every map's strip has the same snapshot steps and
    image size); `show(map_index)` puts one map's snapshots, their values, its trace and its title into it."""

    def __init__(self, result):
        self.result = result
        n, (h, w) = len(result.oip.snapshot_steps), result.oip.snapshots.shape[2:4]
        self.gap = gap = max(1, w // 7)
        cell, title_in, label_in, plot_in = 1.6, 0.3, 0.3, 2.0  # inches; a snapshot and its gap take `cell`
        px = cell / (w + gap)  # inches per image pixel
        width = cell * n + plot_in + 0.2
        height = 0.15 + px * h + label_in + title_in
        self.fig = fig = new_figure((width, height))
        ax = fig.add_axes((0.1 / width, 0.15 / height, px * (n * (w + gap) - gap) / width, px * h / height))
        self.image = show_image(ax, self._mosaic(0), interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        self.labels = [ax.text(i * (w + gap) + w / 2, -1, "", ha="center", va="bottom", fontsize=7) for i in range(n)]
        x0, y0 = cell * n + 0.55, 0.45
        top = height - title_in - 0.25
        self.plot = plot = fig.add_axes((x0 / width, y0 / height, (width - x0 - 0.1) / width, (top - y0) / height))
        (self.line,) = plot.plot(np.arange(1, result.oip.traces.shape[1] + 1), result.oip.traces[0])
        plot.set_xscale("log")
        plot.set_xlabel("step", fontsize=7, labelpad=1)
        plot.set_title("objective", fontsize=8)
        plot.xaxis.set_minor_formatter(NullFormatter())  # a short trace would label its minor ticks, overlapping
        plot.tick_params(which="both", labelsize=6)
        self.title = fig.text(0.5, 1 - 0.5 * title_in / height, "", ha="center", va="center", fontsize=9)

    def _mosaic(self, flat: int) -> np.ndarray:
        """Start `flat`'s snapshots contrast-enhanced, side by side."""
        snaps = display_planes(self.result.oip.snapshots[flat])
        n, w, gap = len(snaps), snaps.shape[2], self.gap
        return tile_mosaic([enhance_contrast(img) for img in snaps], n, gap=gap)[:, : n * (w + gap) - gap]

    def show(self, map_index: int) -> None:
        """Puts the best start of map `map_index` into the figure: its snapshots with their steps and values, its
        trace and the title."""
        r = self.result
        pos = int(np.flatnonzero(r.map_indices == map_index)[0])
        flat = pos * r.restarts + int(r.best_start[pos])
        trace = r.oip.traces[flat]
        self.image.set_data(image_data(self._mosaic(flat)))
        for label, s in zip(self.labels, r.oip.snapshot_steps):
            label.set_text(f"step {s + 1}\n{trace[s]:.3g}")
        self.line.set_ydata(trace)
        self.plot.relim()  # The plot's limits follow this map's trace, as a new plot's would.
        self.plot.autoscale_view()
        self.title.set_text(f"{r.layer_name} {r.labels[pos]}: best of {r.restarts} starts")
