"""What the site shows of the test images per map, computed here and drawn there (`jaxoip.site`): each map's
exemplars, whole, and where on them the map fires (its activation spread over its nodes' receptive fields).

(The histogram of each map's objective over the test images comes with the scan: `ScanResult.data_histogram`.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float, Int

from jaxoip.analysis.exemplars import Exemplars
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.models.cnn import MAP_KINDS, TrainedModel, batched_layer_map, get_layer, layer_shapes, receptive_field
from jaxoip.numerics import DEFAULT_PRECISION, Precision


@dataclasses.dataclass(frozen=True)
class DataViews:
    """Per map (all maps of the layer): its exemplars, whole, and the map's activation over each of them.

    The site draws the activation over a grey image in red, beside a colour image as a heat map
    (`jaxoip.site.images.exemplar_tiles`)."""

    split: str
    # Per map: its k exemplar images in pixel units clipped to 0..255, (k, H, W, C); (0, H, W, C) for a map that
    # no image activates or that `data_views` was not asked for.
    images: tuple[Float[np.ndarray, "k H W C"], ...]
    # Per map and exemplar: the map's activation spread over the receptive fields of its nodes (the largest value
    # where fields overlap), divided by that image's peak: 1 where the map fires most, 0 where it is silent.
    heat: tuple[Float[np.ndarray, "k H W"], ...]
    values: Float[np.ndarray, "c k"]
    image_indices: Int[np.ndarray, "c k"]
    # Per map and exemplar: its class's name where the data names its classes (class folders, CIFAR's meta),
    # "" otherwise (MNIST's digits are not shown) and where there is no exemplar.
    class_names: tuple[tuple[str, ...], ...] = ()

    @property
    def colour(self) -> bool:
        """Whether the images have colour channels (the site then draws the activation beside them)."""
        return bool(self.images) and self.images[0].shape[-1] != 1


def field_boxes(config, layer_name: str) -> list[tuple[int, int, int, int, int, int]]:
    """Every node (i, j) of a map of `layer_name` with its receptive field's rows r0:r1 and columns c0:c1."""
    h, w, _ = layer_shapes(config)[layer_name]
    return [(i, j, *receptive_field(config, layer_name, i, j)) for i in range(h) for j in range(w)]


def _padded(images: np.ndarray) -> np.ndarray:
    """Up to 256 `images` followed by blank ones, a power of two (at least 8) in all: scans of a few maps, with
    other numbers of exemplars, share a few compiled passes. More images (a whole layer's) are left as they are."""
    if len(images) > 256:
        return images
    n = 1 << max(3, (len(images) - 1).bit_length())
    return np.concatenate([images, np.zeros((n - len(images), *images.shape[1:]), images.dtype)])


def data_views(
    trained: TrainedModel,
    data: MNIST,
    layer_name: str,
    exemplars: Exemplars,
    precision: Precision = DEFAULT_PRECISION,
    maps: Sequence[int] | None = None,
) -> DataViews:
    """`exemplars` (of `exemplars.split`) whole, each with its map's activation spread over the receptive fields
    of the map's nodes: where in the image the map fires. One forward pass of the few images.

    `maps`: the maps whose views are made (default: every map of the layer); the others get none, as a map that
    no image activates: a scan of a few maps pays for their exemplars' pass only, not for the whole layer's.
    """
    spec = get_layer(trained.config, layer_name, MAP_KINDS)
    images, labels = check_data(data).split(exemplars.split)
    n_maps = exemplars.image_indices.shape[0]
    shown = np.zeros(n_maps, bool)
    shown[np.arange(n_maps) if maps is None else np.asarray(maps, int)] = True
    rows_of = np.where(shown[:, None], exemplars.image_indices, -1)  # (c, k) image indices, -1 for none
    used = np.unique(rows_of[rows_of >= 0])
    std = trained.standardization
    acts = None
    if used.size:
        acts = batched_layer_map(trained.model, std(_padded(images[used])), spec.name, precision=precision)
    pos = {int(n): p for p, n in enumerate(used)}
    boxes = field_boxes(trained.config, spec.name)
    pictures, heats = [], []
    for m in range(n_maps):
        rows = [int(n) for n in rows_of[m] if n >= 0]
        heat = np.zeros((len(rows), *images.shape[1:3]), np.float32)
        for e, n in enumerate(rows):
            a = acts[pos[n], :, :, m]
            for i, j, r0, r1, c0, c1 in boxes:
                heat[e, r0:r1, c0:c1] = np.maximum(heat[e, r0:r1, c0:c1], a[i, j])
            peak = float(a.max())
            heat[e] = heat[e] / peak if peak > 0 else heat[e] * 0
        heats.append(heat)
        pictures.append(np.clip(np.asarray(images[rows], np.float32), 0, 255))
    names = tuple(
        tuple(data.class_name(labels[n]) if n >= 0 and data.class_names else "" for n in row)
        for row in exemplars.image_indices
    )
    return DataViews(exemplars.split, tuple(pictures), tuple(heats), exemplars.values, exemplars.image_indices, names)
