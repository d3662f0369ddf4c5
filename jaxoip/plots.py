"""Matplotlib figures, built with the object API (`matplotlib.figure.Figure`).

Nothing here touches pyplot or the global backend: figures are returned (a notebook displays them
inline) and written with `save_figure`. Image galleries are composed as one array mosaic drawn by a
single `imshow`, so 128 maps take a fraction of a second instead of hundreds of axes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

# Resolution of every figure, shown (a notebook draws a Figure at its own dpi) and saved: the one place to set it.
DPI = 150


def new_figure(figsize=None) -> Figure:
    """A `Figure` at `DPI`, without pyplot (no global state, no backend switch)."""
    return Figure(figsize=figsize, dpi=DPI)


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kwargs) -> tuple[Figure, object]:
    """`plt.subplots` without pyplot: a new `Figure` and its axes (no global state, no backend switch)."""
    fig = new_figure(figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | Path, dpi: int | None = None, tight: bool = True) -> Path:
    """Saves `fig` at `dpi` (default `DPI`); writes to a temporary name first so a crash leaves no partial PNG.

    `tight=False` for figures laid out by hand: a tight bounding box costs a second full draw.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi or DPI, bbox_inches="tight" if tight else None, format=path.suffix.lstrip(".") or "png")
    tmp.replace(path)
    return path


def plot_history(history: dict, path: str | Path | None = None):
    """Loss and accuracy per epoch, training and test, like the study's live epoch plot."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    # Markers: a line through a single epoch is invisible; up to about 50 epochs they also show each one.
    style = dict(marker="o", markersize=4 if len(epochs) <= 50 else 0)
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, history["loss"], label="training", **style)
    ax_loss.plot(epochs, history["val_loss"], label="test", **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.plot(epochs, history["accuracy"], label="training", **style)
    ax_acc.plot(epochs, history["val_accuracy"], label="test", **style)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) == 1:  # One point: one epoch's width around it, one tick, rather than an empty range.
            ax.set(xlim=(0.5, 1.5), xticks=[1])
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def enhance_contrast(img, low: float = 2.0, high: float = 98.0):
    """Stretches the [low, high] percentiles of an image to [0, 1] (the study's contrast-enhanced view).

    A colour image (H, W, 3) is stretched channel by channel.
    """
    img = np.asarray(img, np.float64)
    if img.ndim == 3:
        return np.stack([enhance_contrast(img[..., c], low, high) for c in range(img.shape[-1])], axis=-1)
    lo, hi = np.percentile(img, [low, high])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def display_planes(images) -> np.ndarray:
    """Images (..., H, W, C) as drawn: (..., H, W) grey levels for one channel, (..., H, W, 3) RGB for colour
    (an alpha channel is dropped); any other channel count is shown as the channels' mean, in grey."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        return images[..., 0]
    if images.shape[-1] in (3, 4):
        return images[..., :3]
    return images.mean(axis=-1)


def show_image(ax, img, **kwargs):
    """Draws a mosaic or image from `display_planes`: grey levels 0..1 with the "gray" colormap (NaN white), or
    RGB 0..1 (NaN white, values clipped)."""
    img = np.asarray(img)
    if img.ndim == 3:
        return ax.imshow(np.clip(np.nan_to_num(img, nan=1.0), 0.0, 1.0), **kwargs)
    return ax.imshow(img, cmap=check_colormap("gray"), vmin=0, vmax=1, **kwargs)


def show_pixels(ax, pixels):
    """An input image in pixel units (0..255), (H, W, C): grey for one channel, RGB for colour."""
    return show_image(ax, np.clip(display_planes(np.asarray(pixels, np.float32)), 0, 255) / 255.0)


def tile_mosaic(tiles, cols: int, gap: int = 1, top: int = 0) -> np.ndarray:
    """Tiles (N, h, w) or colour tiles (N, h, w, 3) laid out row-major in `cols` columns, NaN (drawn white)
    between them.

    `top` leaves that many empty pixel rows above each row of tiles, for labels.
    """
    tiles = np.asarray(tiles, np.float32)
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    out = np.full((rows * (h + gap + top), cols * (w + gap), *tiles.shape[3:]), np.nan, np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = r * (h + gap + top) + top, c * (w + gap)
        out[y : y + h, x : x + w] = tiles[k]
    return out


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


def exemplar_shades(patch) -> np.ndarray:
    """Dataset pixels (0-255) as grey levels 0-1 for the "gray" colormap: as in MNIST, bright strokes are white.

    Colour patches (fh, fw, C) become RGB 0-1 (`display_planes`). The one mapping of both figures that show
    exemplars (`oip_gallery`, `plot_exemplars`) and of the plain OIP.
    """
    patch = np.asarray(patch, np.float32)
    if patch.ndim == 3:
        patch = display_planes(patch)
    return patch / 255.0


def snapshot_strip(result, map_index: int, path=None):
    """The best start of one map at the log-spaced snapshot steps, with its objective trace."""
    pos = int(np.flatnonzero(result.map_indices == map_index)[0])
    flat = pos * result.restarts + int(result.best_start[pos])
    snaps = display_planes(result.oip.snapshots[flat])
    steps = result.oip.snapshot_steps
    trace = result.oip.traces[flat]
    fig, axes = subplots(1, len(steps) + 1, figsize=(1.6 * (len(steps) + 1) + 1.5, 2.0))
    for ax, img, s in zip(axes, snaps, steps):
        show_image(ax, enhance_contrast(img))
        ax.set_title(f"step {s + 1}\n{trace[s]:.3g}", fontsize=7)
        ax.axis("off")
    axes[-1].plot(np.arange(1, len(trace) + 1), trace)
    axes[-1].set(xscale="log", xlabel="step", title="objective")
    axes[-1].title.set_fontsize(8)
    fig.suptitle(f"{result.layer_name} {result.labels[pos]}: best of {result.restarts} starts", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


# --- Activation analysis (jaxoip.analysis.activations) --------------------------------------------------------------


def check_colormap(name: str):
    """The matplotlib colormap `name` with NaN (empty grid cells) drawn white; a clear error if unknown."""
    from jaxoip.errors import JaxoipError

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise JaxoipError(f"unknown colormap {name!r}; e.g. viridis, magma, inferno, jet, gray") from None
    return cmap.with_extremes(bad="white")


def _draw_grid(ax, grid, cell_shape, per_row, cmap, vmin, vmax):
    """One activation grid with thin separators between cells; y ticks give each row's first map."""
    h, w = cell_shape
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    rows = grid.shape[0] // h
    for r in range(1, rows):
        ax.axhline(r * h - 0.5, color="#ddd", lw=0.5, alpha=0.7)
    for c in range(1, per_row):
        ax.axvline(c * w - 0.5, color="#ddd", lw=0.5, alpha=0.7)
    step = max(1, rows // 16)
    ax.set_yticks(
        np.arange(0, rows, step) * h + (h - 1) / 2, [str(r * per_row) for r in range(0, rows, step)], fontsize=6
    )
    ax.set_xticks(np.arange(per_row) * w + (w - 1) / 2, [f"+{c}" for c in range(per_row)], fontsize=6)
    ax.tick_params(length=0)
    return im


def _grid_figsize(grid, columns: int, extra_rows: float = 0.0):
    # About 0.6 inch per cell, capped so that a Flatten layer's 1,152 nodes still fit on a page.
    per_inch = max(grid.shape[1] / 5.0, grid.shape[0] / 14.0, 1e-9)
    return columns * grid.shape[1] / per_inch + 1.0, grid.shape[0] / per_inch + extra_rows + 0.8


def _class_name(c, class_names=()) -> str:
    """Class `c`'s name where the data has names (class folders, CIFAR's meta), else its number (MNIST's digits)."""
    return class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c))


def _prediction_text(label, probs, class_names=()) -> str:
    p = np.asarray(probs)
    given = f"label {_class_name(label, class_names)}, " if label is not None else ""
    return given + f"predicted {_class_name(p.argmax(), class_names)} ({p.max():.1%})"


def plot_layer_grid(layer_grid, cmap: str = "viridis", path=None, vmin=None, vmax=None, class_names=()):
    """The input image beside the grid of all maps (or nodes) of a layer for it, like the study's figures.
    `class_names`: the classes' names for the label and prediction (default: their numbers)."""
    g = layer_grid
    cm = check_colormap(cmap)
    if g.standardized and vmin is None and vmax is None:
        vmin, vmax = 0.0, 255.0
    gw, gh = _grid_figsize(g.grid, 1)
    fig, (ax_img, ax) = subplots(
        1, 2, figsize=(gw + 2.6, max(gh, 2.8)), gridspec_kw={"width_ratios": [2.0, gw]}, squeeze=True
    )
    show_pixels(ax_img, g.image.pixels)
    ax_img.set_title(f"{g.image.name}\n{_prediction_text(g.image.label, g.probabilities, class_names)}", fontsize=7)
    ax_img.axis("off")
    im = _draw_grid(ax, g.grid, g.cell_shape, g.per_row, cm, vmin, vmax)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=6)
    nodes = g.activations.ndim == 1
    scale = (
        f" (standardized {'over the layer' if nodes else 'per map'}, *64+128, clipped 0..255)" if g.standardized else ""
    )
    ax.set_title(f"{g.layer_name}: {g.n_maps} {'nodes' if nodes else 'maps'}{scale}", fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_comparison(comparison, cmap: str = "viridis", path=None, class_names=()):
    """Grids of group A and group B side by side on one color scale, and the difference of the group means.
    `class_names`: the classes' names for the labels and predictions (default: their numbers)."""
    c = comparison
    cm = check_colormap(cmap)
    grids = list(c.grids_a) + list(c.grids_b)
    g0 = grids[0]
    n = len(grids) + 1
    aspect = g0.grid.shape[0] / g0.grid.shape[1]
    col = min(2.2, 18.0 / n, 12.0 / (0.6 + aspect))  # inches per column; a Flatten grid stays on a page
    fig, axes = subplots(
        2,
        n,
        figsize=(col * n + 1.0, col * (0.6 + aspect) + 1.0),
        gridspec_kw={"height_ratios": [0.6, aspect]},
        squeeze=False,
    )
    for col, g in enumerate(grids):
        group = c.names[0] if col < len(c.grids_a) else c.names[1]
        show_pixels(axes[0, col], g.image.pixels)
        axes[0, col].set_title(
            f"{group}: {g.image.name}\n{_prediction_text(g.image.label, g.probabilities, class_names)}", fontsize=6
        )
        axes[0, col].axis("off")
        im = _draw_grid(axes[1, col], g.grid, g.cell_shape, g.per_row, cm, c.vmin, c.vmax)
    bound = float(np.nanmax(np.abs(c.difference_grid))) or 1.0
    axes[0, -1].axis("off")
    axes[0, -1].set_title(f"mean {c.names[0]} - mean {c.names[1]}\n(raw activations)", fontsize=6)
    im_diff = _draw_grid(
        axes[1, -1], c.difference_grid, g0.cell_shape, g0.per_row, check_colormap("RdBu_r"), -bound, bound
    )
    fig.colorbar(im, ax=axes[1, :-1].tolist(), fraction=0.02, pad=0.01).ax.tick_params(labelsize=6)
    fig.colorbar(im_diff, ax=axes[1, -1], fraction=0.08, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(f"{c.layer_name}: {c.names[0]} versus {c.names[1]}, one color scale", fontsize=9)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_confusion_matrix(cm, path=None, title: str = "", class_names=()):
    """Counts of true (rows) against predicted (columns) classes; off-diagonal cells on their own scale.
    `class_names`: the classes' names for the ticks (default: their numbers)."""
    cm = np.asarray(cm)
    k = len(cm)
    off = np.where(np.eye(k, dtype=bool), np.nan, cm.astype(float))
    fig, ax = subplots(figsize=(0.55 * k + 1.5, 0.55 * k + 1.0))
    im = ax.imshow(off, cmap=check_colormap("Reds"), vmin=0, vmax=max(1.0, float(np.nanmax(off)) if k > 1 else 1.0))
    for i in range(k):
        for j in range(k):
            dark = i != j and cm[i, j] > 0.6 * np.nanmax(off)
            color = "tab:blue" if i == j else ("white" if dark else "black")
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6, color=color)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class")
    if len(class_names) == k:
        ax.set_xticklabels(class_names, rotation=90, fontsize=6)
        ax.set_yticklabels(class_names, fontsize=6)
    ax.set_title(("confusion matrix" + (f": {title}" if title else "")), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="misclassified images")
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_predictions(table, images, path=None, per_row: int = 8, title: str = "", class_names=()):
    """A gallery of images with label and prediction; `table` has columns index, label, predicted, p_predicted.
    `class_names`: the classes' names to show (default: their numbers)."""

    def name(c):
        return _class_name(c, class_names)

    n = max(len(table), 1)
    cols = min(per_row, n)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(1.3 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, table.iterrows()):
        show_pixels(ax, images[int(row["index"])])
        ax.set_title(
            f"#{int(row['index'])}: {name(row['label'])} -> {name(row['predicted'])}\n({row['p_predicted']:.0%})",
            fontsize=7,
        )
    fig.suptitle(title or "predictions (label -> predicted)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _most_common_class(classes, class_names) -> str:
    """'mostly NAME (n/k)' of a map's exemplars' classes (ties: the lower class)."""
    values, counts = np.unique(classes, return_counts=True)
    top = int(np.argmax(counts))
    return f"mostly {_class_name(values[top], class_names)} ({counts[top]}/{len(classes)})"


def plot_exemplars(exemplars, path=None, maps=None, per_row: int = 8, labels=None, class_names=()):
    """For every map (or `maps`), its top test images' receptive-field patches in a row, one mosaic.

    Patches are drawn as in the data (`exemplar_shades`: bright strokes white); a map that no image
    activates has none and is labelled "dead on data". With the split's `labels` and the data's
    `class_names` (class folders, CIFAR's meta), each map's label also names its exemplars' most common class.
    """
    ex = exemplars
    maps = list(range(len(ex.patches))) if maps is None else [int(m) for m in maps]
    k = ex.image_indices.shape[1]
    ph = max((p.shape[0] for m in maps for p in ex.patches[m]), default=1)
    pw = max((p.shape[1] for m in maps for p in ex.patches[m]), default=1)
    # Colour patches (fh, fw, C) give an RGB mosaic.
    colour = any(np.ndim(p) == 3 and np.shape(p)[-1] in (3, 4) for m in maps for p in ex.patches[m])
    top = 5  # pixels above each block for its label
    block_w, block_h = k * (pw + 1) + 2, ph + 1 + top
    cols = min(per_row, len(maps))
    rows = -(-len(maps) // cols)
    mosaic = np.full((rows * block_h, cols * block_w, *((3,) if colour else ())), np.nan, np.float32)
    for n, m in enumerate(maps):
        r, c = divmod(n, cols)
        for e, patch in enumerate(ex.patches[m]):
            y, x = r * block_h + top, c * block_w + e * (pw + 1)
            mosaic[y : y + patch.shape[0], x : x + patch.shape[1]] = exemplar_shades(patch)
    fig, ax = subplots(figsize=(mosaic.shape[1] / 22 + 0.5, mosaic.shape[0] / 22 + 0.8))
    show_image(ax, mosaic, interpolation="nearest")
    for n, m in enumerate(maps):
        r, c = divmod(n, cols)
        status = "dead on data" if len(ex.patches[m]) == 0 else f"{ex.values[m, 0]:.3g}"
        if class_names and labels is not None and len(ex.patches[m]):
            used = ex.image_indices[m][ex.image_indices[m] >= 0]  # -1: no exemplar (the image does not activate it).
            status += f", {_most_common_class(np.asarray(labels)[used], class_names)}"
        ax.text(c * block_w, r * block_h + top - 0.8, f"map {m}: {status}", fontsize=5, va="bottom")
    ax.axis("off")
    ax.set_title(
        f"{ex.layer_name}: top-{k} {ex.split} images per map (receptive-field patch of the most active node)",
        fontsize=8,
    )
    if path is not None:
        save_figure(fig, path)
    return fig
