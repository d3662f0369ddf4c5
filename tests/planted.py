"""A tiny CNN with hand-set weights: one dead map and one that only coarse fluctuations wake."""

import jax.numpy as jnp
from flax import nnx

from jaxoip.data import Standardization
from jaxoip.model import ModelConfig, TrainedModel, init_model

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
