"""Dataset exemplars: for every map of a conv or pool layer, the images of a split that activate it most.

With each image come the map's most active node and the input patch (receptive field) that node sees.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Shaped

from jaxoip._check import check_finite_images, check_int
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.models.cnn import (
    MAP_KINDS,
    TrainedModel,
    batched_layer_map,
    check_trained,
    layer_shapes,
    receptive_field,
)
from jaxoip.models.network import Layer, find_layer
from jaxoip.numerics import DEFAULT_PRECISION, Precision


@dataclasses.dataclass
class Exemplars:
    """Top-k images per map: indices into the split, activation of the most active node, that node."""

    layer_name: str
    split: str
    image_indices: Int[np.ndarray, "c k"]
    values: Float[np.ndarray, "c k"]
    nodes: Int[np.ndarray, "c k 2"]  # row, column of the most active node
    # Per map: the input pixels of each node's receptive field ((k, fh, fw, C) for colour images); an object
    # array of k crops where fields clipped at the border differ in size. Only images that activate the map
    # (value > 0) are exemplars: the others have image index and node -1 and no patch, so a map dead on the
    # data has none.
    patches: list[Float[np.ndarray, "k fh fw *ch"] | Shaped[np.ndarray, " k"]]

    @property
    def dead(self) -> Bool[np.ndarray, " c"]:
        """Maps whose largest activation over the split is <= 0: no image activates them."""
        return ~(self.values[:, 0] > 0)


def max_node(acts: Float[Array, "n h w c"]) -> tuple[Float[Array, "n c"], Int[Array, "n c"]]:
    """Per image and map: the largest node activation and its flat position."""
    flat = acts.reshape(acts.shape[0], -1, acts.shape[-1])
    return flat.max(axis=1), jnp.argmax(flat, axis=1)


def find_exemplars(
    trained: TrainedModel,
    data: MNIST,
    layer_name: str | Layer = "Conv2D_3",
    k: int = 5,
    split: str = "test",
    precision: Precision = DEFAULT_PRECISION,
) -> Exemplars:
    """For every map of `layer_name`, the `k` images of `split` whose most active node is highest (and above 0)."""
    spec = find_layer(check_trained(trained).config, layer_name, MAP_KINDS)
    check_int("k (exemplars per map)", k, 1)
    images, _ = check_data(data).split(split)
    images = check_finite_images(f"the {split} images", images)
    best, where = batched_layer_map(
        trained.model, trained.standardization(images), spec.name, max_node, precision=precision
    )
    return exemplars_from_maxima(trained, images, spec.name, k, split, best, where)


def top_k(values: Float[np.ndarray, "c n"], k: int) -> Int[np.ndarray, "c k"]:
    """Per row, the indices of its `k` largest values, largest first, ties to the lower index: the first `k` of
    a stable descending sort, found without sorting the whole row (a partition, then a sort of the few above
    the k-th value and its ties)."""
    n = values.shape[1]
    out = np.empty((values.shape[0], k), np.int64)
    for c, row in enumerate(values):
        candidates = np.flatnonzero(row >= np.partition(row, n - k)[n - k])  # In index order, ties included.
        out[c] = candidates[np.argsort(-row[candidates], kind="stable")[:k]]
    return out


def exemplars_from_maxima(
    trained: TrainedModel,
    images: Float[np.ndarray, "n H W ch"],
    layer_name: str | Layer,
    k: int,
    split: str,
    best: Float[np.ndarray, "n c"],
    where: Int[np.ndarray, "n c"],
) -> Exemplars:
    """`find_exemplars`' result from every image's largest node activation per map (`best`) and its flat
    position (`where`), as a pass over `images` that also computes other statistics gives them."""
    spec = find_layer(trained.config, layer_name, MAP_KINDS)
    k = max(1, min(k, images.shape[0]))
    idx = top_k(best.T, k)  # (C, k)
    values = np.take_along_axis(best.T, idx, axis=1)
    flat_node = np.take_along_axis(where.T, idx, axis=1)
    width = layer_shapes(trained.config)[spec.name][1]
    nodes = np.stack([flat_node // width, flat_node % width], axis=-1)
    # An image that leaves the map at or below zero is no exemplar (ties at zero would pick arbitrary images).
    inactive = ~(values > 0)
    idx, nodes = np.where(inactive, -1, idx), np.where(inactive[..., None], -1, nodes)
    patches, fields = [], {}  # A node's field, computed once: the maps share their nodes.
    for m in range(idx.shape[0]):
        crops = []
        for n in np.flatnonzero(~inactive[m]):
            node = tuple(int(v) for v in nodes[m, n])
            if node not in fields:
                fields[node] = receptive_field(trained.config, spec.name, *node)
            r0, r1, c0, c1 = fields[node]
            crop = images[idx[m, n], r0:r1, c0:c1]
            crops.append(crop[..., 0] if crop.shape[-1] == 1 else crop)  # Grayscale patches (fh, fw) as before.
        if not crops:
            patches.append(np.zeros((0, 0, 0), images.dtype))
        elif len({c.shape for c in crops}) == 1:
            patches.append(np.stack(crops))
        else:  # Fields clipped at the border differ in size; np.asarray would try to broadcast them.
            ragged = np.empty(len(crops), dtype=object)
            ragged[:] = crops
            patches.append(ragged)
    return Exemplars(spec.name, split, idx, values, nodes, patches)
