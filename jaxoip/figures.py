"""The figures' common ground, built with matplotlib's object API (`matplotlib.figure.Figure`): one resolution,
new figures and axes, saving, and the ways images are drawn (grey or colour planes, contrast, mosaics).

Nothing here touches pyplot or the global backend: figures are returned (a notebook displays them inline) and
written with `save_figure`. Image galleries are composed as one array mosaic drawn by a single `imshow`, so 128
maps take a fraction of a second instead of hundreds of axes. The figures themselves live beside what they show:
`jaxoip.models.figures` (training), `jaxoip.analysis.figures` (activations, predictions, exemplars),
`jaxoip.oip.figures` (OIP galleries and snapshots), `jaxoip.seeds.figures` (seed comparisons).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from jaxoip.errors import JaxoipError

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


def warm_up_text() -> None:
    """Builds matplotlib's mathtext grammar, once per process, by laying out a log axis' tick label (10^0, as
    the snapshot strips' trace plot shows): the first such label otherwise spends tens of milliseconds on it
    (`jaxoip._prefetch` does it ahead)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    MathTextParser("agg").parse(r"$\mathdefault{10^{0}}$", DPI, FontProperties(size=6))


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


def image_data(img) -> np.ndarray:
    """What `show_image` hands `imshow` (and an image redrawn in place, `AxesImage.set_data`): grey levels as
    they are, RGB with NaN white and values clipped to 0..1."""
    img = np.asarray(img)
    return np.clip(np.nan_to_num(img, nan=1.0), 0.0, 1.0) if img.ndim == 3 else img


def show_image(ax, img, **kwargs):
    """Draws a mosaic or image from `display_planes`: grey levels 0..1 with the "gray" colormap (NaN white), or
    RGB 0..1 (NaN white, values clipped)."""
    img = image_data(img)
    if img.ndim == 3:
        return ax.imshow(img, **kwargs)
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


def exemplar_shades(patch) -> np.ndarray:
    """Dataset pixels (0-255) as grey levels 0-1 for the "gray" colormap: as in MNIST, bright strokes are white.

    Colour patches (fh, fw, C) become RGB 0-1 (`display_planes`). The one mapping of both figures that show
    exemplars (`oip_gallery`, `plot_exemplars`) and of the plain OIP.
    """
    patch = np.asarray(patch, np.float32)
    if patch.ndim == 3:
        patch = display_planes(patch)
    return patch / 255.0


def check_colormap(name: str):
    """The matplotlib colormap `name` with NaN (empty grid cells) drawn white; a clear error if unknown."""
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise JaxoipError(f"unknown colormap {name!r}; e.g. viridis, magma, inferno, jet, gray") from None
    return cmap.with_extremes(bad="white")
