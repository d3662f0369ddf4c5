"""Tiny networks with hand-set weights: a CNN with one dead map and one that only coarse fluctuations
wake, and a dense network whose nodes are maximized by a known pattern (a ring)."""

import jax.numpy as jnp
from flax import nnx

from jaxoip.data.mnist import Standardization
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model

PLANTED_CONFIG = ModelConfig(conv=((1, 3, "linear"), (2, 3, "relu")), pool=(2,), dense=((10, "softmax"),))
DEAD, COARSE = 0, 1


def planted_model(threshold: float = 80.0) -> TrainedModel:
    """Conv2D_1 sums 3x3 patches; after pooling, Conv2D_2 map 1 sums again and fires above `threshold`.

    Fine per-pixel noise averages out in these sums; coarse noise adds up coherently.
    Conv2D_2 map 0 has zero weights and a negative bias: dead for every input.
    """
    model = init_model(PLANTED_CONFIG, 0)
    state = nnx.state(model, nnx.Param)
    state["Conv2D_1"]["kernel"][...] = jnp.ones((3, 3, 1, 1))
    state["Conv2D_1"]["bias"][...] = jnp.zeros((1,))
    k2 = jnp.zeros((3, 3, 1, 2)).at[..., COARSE].set(1.0)
    state["Conv2D_2"]["kernel"][...] = k2
    state["Conv2D_2"]["bias"][...] = jnp.array([-1.0, -threshold])
    nnx.update(model, state)
    return TrainedModel(model=model, standardization=Standardization(0.0, 1.0))


DENSE_CONFIG = ModelConfig(conv=(), pool=(), dense=((2, "relu"), (10, "softmax")))
LIVE_NODE, ASLEEP_NODE = 0, 1


def ring_pattern(size: int = 28) -> jnp.ndarray:
    """A smooth ring of radius 8 pixels about the centre, standardized (size, size)."""
    yy, xx = jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing="ij")
    r = jnp.sqrt((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2)
    ring = jnp.exp(-((r - 8.0) ** 2) / 8.0)
    return (ring - ring.mean()) / ring.std()


def planted_dense_model(asleep_bias: float = -20.0) -> TrainedModel:
    """Dense_1 nodes that respond to a ring: the maximizing standardized image is the ring itself.

    Both nodes are the correlation of the image with the ring pattern (times 28 for a standardized
    image: at most 28, noise gives about +-1); node 1 adds `asleep_bias`, so its ReLU is zero on noise
    and only an image close to the ring wakes it. The standardized image that maximizes either node is
    the ring itself.
    """
    model = init_model(DENSE_CONFIG, 0)
    state = nnx.state(model, nnx.Param)
    w = ring_pattern().reshape(-1) / 28.0
    state["Dense_1"]["kernel"][...] = jnp.stack([w, w], axis=1)
    state["Dense_1"]["bias"][...] = jnp.array([0.0, asleep_bias])
    nnx.update(model, state)
    return TrainedModel(model=model, standardization=Standardization(0.0, 1.0))
