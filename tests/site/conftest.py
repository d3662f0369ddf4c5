"""The site tests' colour scan: a tiny untrained 32x32x3 model on generated images (no MNIST)."""

import dataclasses

import numpy as np
import pytest

from jaxoip.data.images import _dataset
from jaxoip.data.mnist import Standardization
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.oip.config import OIPConfig
from jaxoip.oip.scan import scan_maps

SHAPE = (32, 32, 3)
CONFIG = ModelConfig(conv=((8, 3, "relu"), (8, 3, "relu")), pool=(2,), dense=((16, "relu"), (10, "softmax")))


@pytest.fixture(scope="session")
def colour_scan():
    """One map's 8 starts, searched for a few steps: noise-like images that fall into 8 one-start facets."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 120, (48, *SHAPE))
    x[..., :16, 0] += 120
    x[:, 16:, :, 2] += 120
    data = _dataset(x[:32], rng.integers(0, 10, 32), x[32:], rng.integers(0, 10, 16), source="generated")
    model = init_model(dataclasses.replace(CONFIG, input_shape=SHAPE), 3)
    trained = TrainedModel(model, Standardization.fit(data.train_images))
    return scan_maps(trained, "Conv2D_2", [0], 8, OIPConfig(steps=6), precursor_starts=4, data=data, progress=False)
