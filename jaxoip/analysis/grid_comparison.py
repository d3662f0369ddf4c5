"""Comparisons of two groups of images at one layer (e.g. three 4s against three 9s).

The groups' layer grids share one color scale; `map_summary` says per map how strongly and how often
each group activates it, and which maps only one group wakes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
from jaxtyping import ArrayLike, Float

from jaxoip.analysis.grids import LayerGrid, activation_grid, image_grids
from jaxoip.data.inputs import ImageSource, get_images
from jaxoip.data.mnist import MNIST, check_data, load_mnist
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import TrainedModel, check_trained, get_layer
from jaxoip.numerics import DEFAULT_PRECISION, Precision


def _per_map(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and map: mean and max over the map's nodes; a dense layer's node is its own map."""
    acts = np.asarray(acts, np.float64)
    flat = acts.reshape(acts.shape[0], -1, acts.shape[-1]) if acts.ndim == 4 else acts[:, None, :]
    return flat.mean(axis=1), flat.max(axis=1)


def map_summary(
    acts_a: Float[ArrayLike, " n_a *layer"], acts_b: Float[ArrayLike, " n_b *layer"], active_level: float = 0.1
) -> pd.DataFrame:
    """Per map: mean activation in group A and in group B, their difference, and where the map is active.

    `acts_a` (n_a, H, W, C) or (n_a, N) and `acts_b` likewise are raw layer outputs. A map is active in an
    image when its largest node exceeds `active_level` times the largest activation of all the images.
    `active_a` is the fraction of A's images where it is active; `only_a`: active in every image of A and
    in none of B (and conversely for `only_b`).
    """
    acts_a, acts_b = np.asarray(acts_a), np.asarray(acts_b)
    if acts_a.shape[1:] != acts_b.shape[1:] or acts_a.ndim not in (2, 4) or 0 in (len(acts_a), len(acts_b)):
        raise JaxoipError(
            f"groups need at least one image each and the same layer shape; got {acts_a.shape} and {acts_b.shape}"
        )
    mean_a, max_a = _per_map(acts_a)
    mean_b, max_b = _per_map(acts_b)
    top = max(float(max_a.max()), float(max_b.max()))
    threshold = active_level * top if top > 0 else 0.0
    active_a, active_b = (max_a > threshold).mean(axis=0), (max_b > threshold).mean(axis=0)
    return pd.DataFrame(
        {
            "map": np.arange(mean_a.shape[1]),
            "mean_a": mean_a.mean(axis=0),
            "mean_b": mean_b.mean(axis=0),
            "difference": mean_a.mean(axis=0) - mean_b.mean(axis=0),
            "active_a": active_a,
            "active_b": active_b,
            "only_a": (active_a == 1.0) & (active_b == 0.0),
            "only_b": (active_b == 1.0) & (active_a == 0.0),
        }
    ).set_index("map")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Grids of two groups of images at one layer on one color scale, and per-map statistics."""

    layer_name: str
    names: tuple[str, str]
    grids_a: tuple[LayerGrid, ...]
    grids_b: tuple[LayerGrid, ...]
    vmin: float  # the common color scale of all grids
    vmax: float
    # Raw mean of A minus mean of B, node by node, laid out like the grids.
    difference_grid: Float[np.ndarray, "grid_h grid_w"]
    summary: pd.DataFrame  # `map_summary`, one row per map


def compare_images(
    trained: TrainedModel,
    layer_name: str,
    group_a: str | Sequence[ImageSource],
    group_b: str | Sequence[ImageSource],
    data: MNIST | None = None,
    names: tuple[str, str] = ("A", "B"),
    per_row: int = 8,
    standardize: bool = False,
    active_level: float = 0.1,
    precision: Precision = DEFAULT_PRECISION,
) -> Comparison:
    """Layer grids of two groups of images (e.g. three 4s against three 9s) with per-map statistics.

    Groups are lists of specs/arrays or comma-separated specs ('test:4,test:6'); all images go through
    the network in one batched pass.
    """
    get_layer(check_trained(trained).config, layer_name)
    check_data(data, optional=True)
    if per_row < 1:
        raise JaxoipError(f"maps per row must be at least 1; got {per_row}")
    shape = trained.config.input_shape
    needs_data = data is None and any(
        isinstance(g, str) or any(isinstance(i, str) for i in g) for g in (group_a, group_b)
    )
    data = load_mnist() if needs_data else data
    imgs_a, imgs_b = get_images(group_a, data, shape), get_images(group_b, data, shape)
    grids = image_grids(trained, layer_name, imgs_a + imgs_b, per_row, standardize, precision)
    grids_a, grids_b = tuple(grids[: len(imgs_a)]), tuple(grids[len(imgs_a) :])
    acts_a = np.stack([g.activations for g in grids_a])
    acts_b = np.stack([g.activations for g in grids_b])
    if standardize:
        vmin, vmax = 0.0, 255.0
    else:
        vmin = min(float(np.nanmin(g.grid)) for g in grids)
        vmax = max(float(np.nanmax(g.grid)) for g in grids)
    diff = activation_grid(acts_a.mean(axis=0) - acts_b.mean(axis=0), per_row)
    summary = map_summary(acts_a, acts_b, active_level)
    return Comparison(layer_name, tuple(names), grids_a, grids_b, vmin, vmax, diff, summary)
