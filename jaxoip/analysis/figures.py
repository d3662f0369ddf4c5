"""Figures of activations, predictions and exemplars (`jaxoip.analysis`), drawn with matplotlib's object API
(`jaxoip.figures`): a layer's grid for one image, two groups compared, the confusion matrix, a gallery of
predictions, and each map's exemplar patches."""

from __future__ import annotations

import numpy as np

from jaxoip.errors import OutputError
from jaxoip.figures import DPI, check_colormap, exemplar_shades, save_figure, show_image, show_pixels, subplots
from jaxoip.models.cnn import layer_shapes, receptive_field
from jaxoip.models.memory import PlannedArray, check_arrays


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


# matplotlib's Agg renderer refuses a figure of 2^23 pixels or more in either direction.
AGG_MAX_PIXELS = 2**23


def check_exemplar_figure(config, layer_name: str, k: int, n_images: int, per_row: int = 8) -> None:
    """Refuses a top-`k` exemplar figure (`plot_exemplars`' layout) too large to draw or to hold,
    before any work."""
    h, w, maps = layer_shapes(config)[layer_name]
    r0, r1, c0, c1 = receptive_field(config, layer_name, h // 2, w // 2)
    given, k = k, max(1, min(int(k), n_images))
    cols = min(per_row, maps)
    rows = -(-maps // cols)
    # plot_exemplars: blocks of k patches (1 px apart) per map, 22 mosaic pixels per inch, at DPI.
    width = round((cols * (k * (c1 - c0 + 1) + 2) / 22 + 0.5) * DPI)
    height = round((rows * (r1 - r0 + 6) / 22 + 0.8) * DPI)
    if max(width, height) >= AGG_MAX_PIXELS:
        raise OutputError(
            f"--exemplars {given}: the exemplar figure of {layer_name} would be {width}x{height} pixels, more than "
            f"matplotlib draws ({AGG_MAX_PIXELS} in each direction); use --exemplars "
            f"{max(1, k * (AGG_MAX_PIXELS - 1) // width)} or less"
        )
    check_arrays(
        [
            PlannedArray(
                f"--exemplars {given}",
                "the exemplar figure",
                f"{width}x{height} pixels x 4 bytes, {maps} maps x {k} patches",
                width * height * 4,
                device=False,
            )
        ]
    )
