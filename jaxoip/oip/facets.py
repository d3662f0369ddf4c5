"""Several patterns per map: a diversity term across a map's starts, and grouping of the results into facets.

During the search (`OIPConfig.diversity` > 0), each image is pushed away from the other starts of its
map, as in Lucid's `diversity` objective: the penalty is the mean cosine similarity between the image's
Gram matrix of the first conv layer's features and those of the map's other starts (Gram matrices
ignore where a feature sits, so shifted copies count as alike). The starts of one map are the
consecutive groups of `SearchSetup.group` images of a batch.

After the search, `map_facets` groups a map's results into facets: starts whose images match up to a
translation (maximum normalized cross-correlation over all shifts >= `threshold`) share a facet
(average-linkage hierarchical clustering).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from jaxoip.models.cnn import layer_specs
from jaxoip.oip.config import FACET_THRESHOLD


def gram_features(model, x: jax.Array) -> jax.Array:
    """(N, C*C) unit-norm Gram vectors of the first conv layer's activations."""
    acts = model(x, until=layer_specs(model.config)[0].name)
    n, h, w, c = acts.shape
    flat = acts.reshape(n, h * w, c)
    gram = jnp.einsum("npc,npd->ncd", flat, flat).reshape(n, c * c) / (h * w)
    return gram / (jnp.linalg.norm(gram, axis=1, keepdims=True) + 1e-8)


def diversity_penalty(features: jax.Array, group: int) -> jax.Array:
    """(N,): each image's mean cosine similarity to the other images of its group of `group` consecutive ones."""
    n = features.shape[0]
    f = features.reshape(n // group, group, -1)
    cos = jnp.einsum("gid,gjd->gij", f, f)
    off = cos * (1.0 - jnp.eye(group, dtype=cos.dtype))[None]
    return (off.sum(axis=2) / (group - 1)).reshape(n)


def shift_similarity(images: np.ndarray) -> np.ndarray:
    """(R, R) maximum normalized cross-correlation over all translations of images (R, H, W[, C]), all
    channels shifted together."""
    images = np.asarray(images, np.float64)
    if images.ndim == 4 and images.shape[-1] > 1:
        return _shift_similarity_channels(images)
    x = images.reshape(len(images), images.shape[1], images.shape[2])
    x = x - x.mean(axis=(1, 2), keepdims=True)
    x = x / (np.linalg.norm(x, axis=(1, 2), keepdims=True) + 1e-12)
    h, w = x.shape[1:]
    f = np.fft.rfft2(x, s=(2 * h - 1, 2 * w - 1))  # Zero padding: linear, not circular, correlation.
    corr = np.fft.irfft2(f[:, None] * np.conj(f[None, :]), s=(2 * h - 1, 2 * w - 1))
    return corr.max(axis=(2, 3))


def _shift_similarity_channels(images: np.ndarray) -> np.ndarray:
    """`shift_similarity` of colour images (R, H, W, C): the channels' correlations summed at each shift."""
    x = np.moveaxis(images, -1, 1)  # (R, C, H, W)
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    x = x / (np.linalg.norm(x.reshape(len(x), -1), axis=1)[:, None, None, None] + 1e-12)
    h, w = x.shape[2:]
    f = np.fft.rfft2(x, s=(2 * h - 1, 2 * w - 1))
    corr = np.fft.irfft2((f[:, None] * np.conj(f[None, :])).sum(axis=2), s=(2 * h - 1, 2 * w - 1))
    return corr.max(axis=(2, 3))


@dataclasses.dataclass
class MapFacets:
    """One map's starts grouped into facets, facet 0 holding the best start; representatives are the best
    start of each facet."""

    map_index: int
    labels: Int[np.ndarray, " r"]  # facet of every start
    representatives: Int[np.ndarray, " facets"]  # start index of each facet's best start, by decreasing objective
    objectives: Float[np.ndarray, " facets"]  # objective of each representative
    sizes: Int[np.ndarray, " facets"]  # starts per facet


def map_facets(
    map_index: int,
    images: Float[np.ndarray, "r H W ch"],
    objective: Float[np.ndarray, " r"],
    threshold: float = FACET_THRESHOLD,
) -> MapFacets:
    """Facets of one map's starts with their objectives; starts with objective <= 0 are left out
    (label -1) unless no start is positive."""
    objective = np.asarray(objective)
    use = np.flatnonzero(objective > 0)
    if len(use) == 0:
        use = np.arange(len(objective))
    labels = np.full(len(objective), -1)
    if len(use) == 1:
        raw = np.zeros(1, int)
    else:
        dist = 1.0 - shift_similarity(images[use])
        dist = np.clip((dist + dist.T) / 2, 0, None)
        np.fill_diagonal(dist, 0)
        from scipy.cluster import hierarchy  # Imported when first needed (a scan: in the background).

        z = hierarchy.linkage(dist[np.triu_indices(len(use), 1)], method="average")
        raw = hierarchy.fcluster(z, t=1.0 - threshold, criterion="distance") - 1
    # Renumber facets by their best objective.
    best = {f: use[raw == f][np.argmax(objective[use[raw == f]])] for f in np.unique(raw)}
    order = sorted(best, key=lambda f: -objective[best[f]])
    for new, f in enumerate(order):
        labels[use[raw == f]] = new
    reps = np.array([best[f] for f in order])
    return MapFacets(
        map_index=int(map_index),
        labels=labels,
        representatives=reps,
        objectives=objective[reps],
        sizes=np.array([int((raw == f).sum()) for f in order]),
    )
