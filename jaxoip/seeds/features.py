"""Conv-layer features on real images at sampled spatial positions, for the seed comparison.

Spatial positions are the samples: each test image contributes a random subset of the positions of a
layer's maps (the same positions for every model compared), gathered inside one compiled pass.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from flax import nnx

from jaxoip import numerics
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import TrainedModel, get_layer, layer_output, layer_shapes, pad_batches


def positions_per_image(layer_hw: tuple[int, int], images: int, max_samples: int) -> int:
    return int(min(layer_hw[0] * layer_hw[1], max(1, math.ceil(max_samples / images))))


def sample_positions(seed: int, rows: int, hw: int, k: int) -> np.ndarray:
    """(rows, k) flat map positions, each row a random draw without replacement from 0..hw-1."""
    if k >= hw:
        return np.tile(np.arange(hw, dtype=np.int32), (rows, 1))
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(hw, dtype=np.int32), (rows, 1)), axis=1)[:, :k]


@functools.partial(jax.jit, static_argnames=("graphdef", "layer_name", "precision"))
def _feature_pass(params, xs, positions, *, graphdef: nnx.GraphDef, layer_name: str, precision: numerics.Precision):
    """(params, image batches (steps, B, H, W, 1), positions (B, k)) -> (steps, B, k, C).

    Like `model.batched_layer_map`, but it gathers sampled positions (a per-batch input) inside the
    compiled pass, so the full activations of large layers are never gathered; one program per
    architecture, layer, precision and shape, reused for every model compared.
    """
    with numerics.precision_scope(precision):

        def one(x):
            acts = layer_output(graphdef, params, x, layer_name)
            return jax.vmap(lambda a, p: a.reshape(-1, a.shape[-1])[p])(acts, positions)

        return jax.lax.map(one, xs)


def layer_features(
    trained: TrainedModel,
    pixels,
    layer_name: str,
    positions: np.ndarray | None = None,
    batch_size: int = 500,
    precision: numerics.Precision = numerics.DEFAULT_PRECISION,
) -> np.ndarray:
    """Post-ReLU activations of `layer_name` at sampled positions: (images, k, channels), float32.

    `positions` (B, k) are flat map positions with B = min(batch_size, images); image i uses row
    i % B. Default: all positions.
    """
    hwc = layer_shapes(trained.config)[get_layer(trained.config, layer_name, ("conv",)).name]
    x = np.asarray(trained.standardization(np.asarray(pixels, np.float32)), np.float32)
    n = x.shape[0]
    bs = max(1, min(batch_size, n))
    if positions is None:
        positions = np.tile(np.arange(hwc[0] * hwc[1], dtype=np.int32), (bs, 1))
    positions = np.asarray(positions, np.int32)
    if positions.shape[0] != bs:
        raise JaxoipError(f"positions must have {bs} rows (the batch size), got {positions.shape[0]}")
    xs, _ = pad_batches(x, bs)
    graphdef, params = nnx.split(trained.model)
    out = _feature_pass(params, xs, positions, graphdef=graphdef, layer_name=layer_name, precision=precision)
    return numerics.fetch(out).reshape(-1, *out.shape[2:])[:n]  # Waited for in polls: a Ctrl-C lands while it runs.


def kernel_vectors(trained: TrainedModel, layer_name: str) -> np.ndarray:
    """(channels, kh*kw*c_in) kernels of a conv layer."""
    k = np.asarray(getattr(trained.model, layer_name).kernel[...])
    return k.reshape(-1, k.shape[-1]).T
