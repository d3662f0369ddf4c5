"""The site's views of the test images (`jaxoip.analysis.data_views`): each map's exemplars, whole, with where
the map fires on them."""

import numpy as np

import jaxoip
from jaxoip.analysis import data_views as dv
from jaxoip.analysis.exemplars import find_exemplars
from jaxoip.data.mnist import Standardization
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model


def test_views_of_some_maps_pass_only_their_exemplars_and_match_the_whole_layers(tmp_path, monkeypatch):
    """A scan's site asks for its own maps' views: one pass of their exemplars (padded with blank images to a
    power of two, so that other selections share the compiled pass), the same views as the whole layer's."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (40, 28, 28)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(40) % 3, x_test=x, y_test=np.arange(40) % 3)
    data = jaxoip.load_images(tmp_path / "d.npz")
    config = ModelConfig(conv=((16, 3, "relu"),), pool=(), dense=((10, "softmax"),))
    trained = TrainedModel(init_model(config, 0), Standardization(100.0, 80.0))
    ex = find_exemplars(trained, data, "Conv2D_1", k=2)
    passed = []
    real = dv.batched_layer_map
    monkeypatch.setattr(
        dv, "batched_layer_map", lambda m, imgs, *a, **k: passed.append(len(imgs)) or real(m, imgs, *a, **k)
    )
    every = dv.data_views(trained, data, "Conv2D_1", ex)
    asked = [2, 0]
    some = dv.data_views(trained, data, "Conv2D_1", ex, maps=asked)
    rows = ex.image_indices[asked]
    assert 0 < len(np.unique(rows[rows >= 0])) <= 4 < 8 < len(np.unique(ex.image_indices[ex.image_indices >= 0]))
    assert passed[1] == 8 and passed[0] >= 16  # The asked maps' few exemplars, padded to 8 images.
    for m in range(16):
        if m in asked:
            assert len(some.images[m]) == len(every.images[m]) > 0
            np.testing.assert_array_equal(some.images[m], every.images[m])
            np.testing.assert_allclose(some.heat[m], every.heat[m], rtol=1e-5, atol=1e-6)
        else:  # Not asked for: no views, as for a map no image activates.
            assert some.images[m].shape == (0, 28, 28, 1) and some.heat[m].shape == (0, 28, 28)
