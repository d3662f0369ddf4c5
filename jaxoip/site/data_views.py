"""What the site shows of the test images per map: exemplars with the map's activation laid over them, and the
histogram of the map's mean activation over the split (the quantity the search maximizes)."""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Array, Float, Int

from jaxoip.analysis.exemplars import Exemplars
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.models.cnn import TrainedModel, batched_layer_map, get_layer, layer_shapes, receptive_field
from jaxoip.numerics import DEFAULT_PRECISION, Precision
from jaxoip.site.images import heat_overlay

BINS = 30


@dataclasses.dataclass
class DataViews:
    """Per map (all maps of the layer): histogram of the mean activation over `split`, and exemplar overlays."""

    split: str
    hist_edges: Float[np.ndarray, "c bins+1"]
    hist_counts: Int[np.ndarray, "c bins"]
    # Per map: (k, H, W, 3) whole exemplar images in [0, 1] with the map's activation in red; values and nodes.
    overlays: list[Float[np.ndarray, "k H W 3"]]
    values: Float[np.ndarray, "c k"]
    image_indices: Int[np.ndarray, "c k"]


def _map_means(acts: Float[Array, "b h w c"]) -> Float[Array, "b c"]:
    # Module level: batched_layer_map compiles once per function object.
    return acts.mean(axis=(1, 2))


def _field_boxes(config, layer_name: str) -> list[tuple[int, int, int, int, int, int]]:
    h, w, _ = layer_shapes(config)[layer_name]
    return [(i, j, *receptive_field(config, layer_name, i, j)) for i in range(h) for j in range(w)]


def data_views(
    trained: TrainedModel,
    data: MNIST,
    layer_name: str,
    exemplars: Exemplars,
    split: str = "test",
    precision: Precision = DEFAULT_PRECISION,
) -> DataViews:
    """Histograms of every map's mean activation over `split` and `exemplars` overlaid with their activation."""
    spec = get_layer(trained.config, layer_name, ("conv", "pool"))
    images, _ = check_data(data).split(split)
    std = trained.standardization
    means = batched_layer_map(trained.model, std(images), spec.name, _map_means, precision=precision)
    c = means.shape[1]
    edges = np.zeros((c, BINS + 1))
    counts = np.zeros((c, BINS), np.int64)
    for m in range(c):
        lo, hi = float(means[:, m].min()), float(means[:, m].max())
        counts[m], edges[m] = np.histogram(means[:, m], BINS, range=(lo, hi if hi > lo else lo + 1.0))
    # The whole activation of the exemplar images only (a few per map), each map's nodes spread back to the
    # pixels of their receptive fields: the overlay shows where in the image the map fires.
    used = np.unique(exemplars.image_indices[exemplars.image_indices >= 0])
    acts = batched_layer_map(trained.model, std(images[used]), spec.name, precision=precision) if used.size else None
    pos = {int(n): p for p, n in enumerate(used)}
    boxes = _field_boxes(trained.config, spec.name)
    overlays = []
    for m in range(c):
        tiles = []
        for n in exemplars.image_indices[m]:
            if n < 0:
                continue
            a = acts[pos[int(n)], :, :, m]
            heat = np.zeros(images.shape[1:3], np.float32)
            for i, j, r0, r1, c0, c1 in boxes:
                heat[r0:r1, c0:c1] = np.maximum(heat[r0:r1, c0:c1], a[i, j])
            peak = float(a.max())
            heat = heat / peak if peak > 0 else heat * 0
            base = np.clip(np.asarray(images[int(n)], np.float32), 0, 255) / 255.0
            tiles.append(heat_overlay(base, heat))
        overlays.append(np.stack(tiles) if tiles else np.zeros((0, *images.shape[1:3], 3), np.float32))
    return DataViews(split, edges, counts, overlays, exemplars.values, exemplars.image_indices)
