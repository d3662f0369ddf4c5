"""PNG files and data URIs from image arrays (H, W) or (H, W, C), C in {1, 3}, for the static sites."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from jaxtyping import Float, Shaped
from PIL import Image


def to_uint8(img: Float[np.ndarray, "H W *C"]) -> Shaped[np.ndarray, "H W *C"]:
    """Grey levels or colours in [0, 1] as 8-bit; NaN (empty tiles) drawn white."""
    a = np.asarray(img, np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"expected an image (H, W), (H, W, 1) or (H, W, 3), got shape {a.shape}")
    return np.round(np.clip(np.nan_to_num(a, nan=1.0), 0.0, 1.0) * 255).astype(np.uint8)


def pixels01(pixels: Float[np.ndarray, "*shape"]) -> Float[np.ndarray, "*shape"]:
    """Dataset pixel units (0-255) as [0, 1], clipped: as in MNIST, bright strokes are white."""
    return np.clip(np.asarray(pixels, np.float32), 0, 255) / 255.0


def enhanced(img: Float[np.ndarray, "H W *C"], low: float = 2.0, high: float = 98.0) -> Float[np.ndarray, "H W *C"]:
    """The [low, high] percentiles of an image stretched to [0, 1] (the study's contrast-enhanced view)."""
    a = np.asarray(img, np.float64)
    lo, hi = np.percentile(a, [low, high])
    return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def strip(tiles: list[Float[np.ndarray, "h w *c"]], gap: int = 1) -> Float[np.ndarray, "h W *c"]:
    """Tiles of one shape (h, w[, C]) side by side, `gap` white (NaN) columns between them: a sprite sheet."""
    tiles = [np.asarray(t, np.float32) for t in tiles]
    h, w = tiles[0].shape[:2]
    rest = tiles[0].shape[2:]
    out = np.full((h, len(tiles) * (w + gap) - gap, *rest), np.nan, np.float32)
    for k, t in enumerate(tiles):
        out[:, k * (w + gap) : k * (w + gap) + w] = t
    return out


def write_png(img: Float[np.ndarray, "h w *c"], path: str | Path) -> Path:
    """Writes an image in [0, 1] as an 8-bit grey or RGB PNG."""
    path = Path(path)
    Image.fromarray(to_uint8(img)).save(path, optimize=False)
    return path


def data_uri(img: Float[np.ndarray, "h w *c"]) -> str:
    """An image in [0, 1] as a `data:image/png;base64,...` URI (inline thumbnails in notebooks)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heat_overlay(image01: Float[np.ndarray, "h w *c"], heat: Float[np.ndarray, "h w"]) -> Float[np.ndarray, "h w 3"]:
    """A grey or colour image in [0, 1] with `heat` (H, W) in [0, 1] laid over it in red: where the map fires."""
    img = np.asarray(image01, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
    a = 0.6 * np.clip(np.asarray(heat, np.float32), 0, 1)[..., None]
    return (1 - a) * rgb * 0.85 + a * np.array([1.0, 0.15, 0.05], np.float32)


def heat_colours(heat: Float[np.ndarray, "h w"]) -> Float[np.ndarray, "h w 3"]:
    """`heat` (H, W) in [0, 1] as colours from black through red and yellow to white (matplotlib's "hot")."""
    h = np.clip(np.asarray(heat, np.float32), 0, 1)[..., None]
    return np.clip(3 * h - np.array([0.0, 1.0, 2.0], np.float32), 0, 1)


def heat_beside(image01: Float[np.ndarray, "h w 3"], heat: Float[np.ndarray, "h w"]) -> Float[np.ndarray, "h w2 3"]:
    """A colour image in [0, 1] untouched, a white column, and `heat` (H, W) in [0, 1] as a heat map beside it:
    where the map fires, without tinting the colours that may be what drives it (`heat_overlay` is for grey)."""
    img = np.asarray(image01, np.float32)
    gap = np.full((img.shape[0], 1, 3), np.nan, np.float32)  # Drawn white.
    return np.concatenate([img, gap, heat_colours(heat)], axis=1)


def exemplar_tiles(
    pixels: Float[np.ndarray, "k h w c"], heat: Float[np.ndarray, "k h w"]
) -> Float[np.ndarray, "k h w2 3"]:
    """Exemplar images (pixel units) each with where the map fires (`heat` in [0, 1]): laid over a grey image in
    red (`heat_overlay`), beside a colour image as a heat map (`heat_beside`)."""
    pixels = np.asarray(pixels, np.float32)
    k, h, w, c = pixels.shape
    draw = heat_overlay if c == 1 else heat_beside
    if not k:
        return np.zeros((0, h, w if c == 1 else 2 * w + 1, 3), np.float32)
    return np.stack([draw(pixels01(p), a) for p, a in zip(pixels, heat)])
