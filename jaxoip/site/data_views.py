"""What the site shows of the test images per map: its exemplars, whole, with the map's activation laid over them
(grey images) or beside them as a heat map (colour images, whose colours a red tint would hide).

(The histogram of each map's objective over the test images comes with the scan: `ScanResult.data_histogram`.)"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float, Int

from jaxoip.analysis.exemplars import Exemplars
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.models.cnn import MAP_KINDS, TrainedModel, batched_layer_map, get_layer, layer_shapes, receptive_field
from jaxoip.numerics import DEFAULT_PRECISION, Precision
from jaxoip.site.images import heat_beside, heat_overlay


@dataclasses.dataclass
class DataViews:
    """Per map (all maps of the layer): its exemplars, whole, with the map's activation laid over them (grey
    images) or beside them (colour images)."""

    split: str
    # Per map: (k, H, W, 3) images in [0, 1], activation in red (grey images), or (k, H, 2W+1, 3) for colour
    # images: the image untouched, a white column, the activation as a heat map (`beside`).
    overlays: list[Float[np.ndarray, "k H W3 3"]]
    values: Float[np.ndarray, "c k"]
    image_indices: Int[np.ndarray, "c k"]
    # Per map and exemplar: its class's name where the data names its classes (class folders, CIFAR's meta),
    # "" otherwise (MNIST's digits are not shown) and where there is no exemplar.
    class_names: list[list[str]] = dataclasses.field(default_factory=list)
    beside: bool = False  # Colour images: the activation is drawn beside each image, not over it.


def _field_boxes(config, layer_name: str) -> list[tuple[int, int, int, int, int, int]]:
    h, w, _ = layer_shapes(config)[layer_name]
    return [(i, j, *receptive_field(config, layer_name, i, j)) for i in range(h) for j in range(w)]


def data_views(
    trained: TrainedModel,
    data: MNIST,
    layer_name: str,
    exemplars: Exemplars,
    precision: Precision = DEFAULT_PRECISION,
) -> DataViews:
    """`exemplars` (of `exemplars.split`) whole, each with its map's activation spread over the receptive fields
    of the map's nodes: the overlay shows where in the image the map fires. One forward pass of the few images."""
    spec = get_layer(trained.config, layer_name, MAP_KINDS)
    images, labels = check_data(data).split(exemplars.split)
    used = np.unique(exemplars.image_indices[exemplars.image_indices >= 0])
    std = trained.standardization
    acts = batched_layer_map(trained.model, std(images[used]), spec.name, precision=precision) if used.size else None
    pos = {int(n): p for p, n in enumerate(used)}
    boxes = _field_boxes(trained.config, spec.name)
    beside = images.shape[-1] != 1
    draw = heat_beside if beside else heat_overlay
    h, w = images.shape[1], images.shape[2] * 2 + 1 if beside else images.shape[2]
    overlays = []
    for m in range(exemplars.image_indices.shape[0]):
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
            tiles.append(draw(np.clip(np.asarray(images[int(n)], np.float32), 0, 255) / 255.0, heat))
        overlays.append(np.stack(tiles) if tiles else np.zeros((0, h, w, 3), np.float32))
    names = [
        [data.class_name(labels[n]) if n >= 0 and data.class_names else "" for n in row]
        for row in exemplars.image_indices
    ]
    return DataViews(exemplars.split, overlays, exemplars.values, exemplars.image_indices, names, beside)
