"""Images beyond 28x28x1: a colour 32x32x3 model through the search, the figures and the exemplars."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from jaxoip.data.images import _dataset
from jaxoip.data.mnist import Standardization
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.oip import noise, param, transforms
from jaxoip.oip.config import OIPConfig
from jaxoip.oip.facets import shift_similarity
from jaxoip.oip.similarity import shift_similarity_matrix

SHAPE = (32, 32, 3)
CONFIG = ModelConfig(conv=((8, 3, "relu"), (8, 3, "relu")), pool=(2,), dense=((16, "relu"), (10, "softmax")))


@pytest.fixture(scope="module")
def colour_data():
    """A small colour set with distinct channels: red bright left, blue bright bottom, plus noise."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 120, (48, *SHAPE))
    x[..., :16, 0] += 120
    x[:, 16:, :, 2] += 120
    y = rng.integers(0, 10, 48)
    return _dataset(x[:32], y[:32], x[32:], y[32:], source="generated")


@pytest.fixture(scope="module")
def colour_model(colour_data):
    config = dataclasses.replace(CONFIG, input_shape=SHAPE)
    return TrainedModel(init_model(config, 3), Standardization.fit(colour_data.train_images))


def test_grids_scale_with_the_image_and_stay_at_28():
    assert noise.scaled_grids(noise.DEFAULT_GRIDS, (28, 28)) == noise.DEFAULT_GRIDS
    assert noise.scaled_grids(noise.DEFAULT_GRIDS, (32, 32)) == ((3, 3), (8, 8), (16, 16), (32, 32))
    assert noise.scaled_grids(((3, 3),), (8, 56)) == ((1, 6),)


def test_colour_starts_have_the_model_shape_and_own_channels():
    keys = noise.start_keys(0, np.arange(3), 2).reshape(-1)
    # One compiled program: starts 0-2 from "study", 3-5 from "coarse3".
    x = noise.initial_images(keys, ["study", "coarse3"], np.repeat([0, 1], 3), shape=SHAPE)
    assert x.shape == (6, *SHAPE) and np.isfinite(x).all()
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1, atol=1e-4)
    assert not np.allclose(x[..., 0], x[..., 1])  # Each channel draws its own noise.
    # The coarse3 recipe is smooth at any size: neighbours strongly correlated.
    c = x[3:]
    assert np.corrcoef(c[:, :-1].ravel(), c[:, 1:].ravel())[0, 1] > 0.9
    with pytest.raises(JaxoipError, match="image shape"):
        noise.initial_images(keys, ["study"], shape=(32, 32))


def test_transforms_scale_with_the_image():
    import jax

    img = np.zeros((56, 56, 3), np.float32)
    assert transforms.size_factor(img) == 2.0 and transforms.blur_passes(img) == 4
    assert transforms.blur_passes(np.zeros((28, 28, 1))) == 1
    out = transforms.random_affine(jax.random.key(0), np.random.default_rng(0).normal(size=SHAPE), 2.0, 0.1, 10.0)
    assert out.shape == SHAPE and np.isfinite(out).all()
    cfg = OIPConfig(tv=0.05, blur=0.5)
    assert float(transforms.penalty(cfg, np.asarray(out, np.float32))) > 0


@pytest.mark.parametrize("kind", ["fourier", "maco"])
def test_parameterizations_round_trip_colour(kind):
    img = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    img = (img - img.mean()) / img.std()
    mag = param.maco_magnitude(img[None] + 0.0)
    assert mag.shape == (32, 17)
    p = param.to_params(kind, img)
    assert p.shape[0] == 3
    back = np.asarray(param.to_image(kind, p, SHAPE[:2], magnitude=mag if kind == "maco" else None))
    assert back.shape == SHAPE
    if kind == "fourier":
        np.testing.assert_allclose(back, img, atol=1e-4)


def test_colour_similarity_counts_all_channels():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 16, 16, 3))
    shifted = np.roll(a, 2, axis=2)
    other = a[:, :, :, ::-1]  # Same planes, other channels: not the same colour image.
    sim = shift_similarity(np.concatenate([a[:1], shifted[:1], other[:1]]))
    assert sim[0, 1] > 0.85 and sim[0, 2] < 0.5
    signed, _ = shift_similarity_matrix(a[:1], np.concatenate([shifted[:1], other[:1]]), max_shift=3)
    assert float(signed[0, 0]) > 0.99 and float(signed[0, 1]) < 0.5


@pytest.mark.mnist  # Needs no MNIST: in that tier for its scan and figures (the fast tier stays under 2 minutes).
def test_colour_scan_gallery_and_exemplars(colour_model, colour_data, tmp_path):
    import jaxoip
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.analysis.figures import plot_exemplars, plot_layer_grid
    from jaxoip.analysis.grids import layer_grid
    from jaxoip.figures import save_figure

    cfg = OIPConfig(steps=12, snapshot_steps=(3,), param="fourier", jitter=2.0, scale=0.1, rotate=5.0, tv=0.05)
    result = jaxoip.scan_maps(
        colour_model,
        "Conv2D_2",
        [0, 3],
        restarts=2,
        config=cfg,
        precursor_starts=4,
        screen=2,
        data=colour_data,
        progress=False,
        quality=None,  # The quality measures' compiles take a minute on CPU; their colour similarity is tested above.
    )
    assert result.images.shape == (2, 2, *SHAPE) and np.isfinite(result.images).all()
    exemplars = find_exemplars(colour_model, colour_data, "Conv2D_2", k=2)
    live = [p for p in exemplars.patches if len(p)]
    assert live and np.asarray(live[0]).shape[-1] == 3
    out = jaxoip.write_scan(result, tmp_path / "scan", snapshot_maps=[0], exemplars=exemplars)
    rgb = np.asarray(Image.open(out / "gallery.png").convert("RGBA"))[..., :3].astype(int)
    assert Image.open(out / "gallery.png").mode in ("RGB", "RGBA")
    # Colour pixels: channels differ somewhere beyond anti-aliasing of grey text.
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 40).mean() > 0.01
    assert np.load(out / "oips.npz")["best_pixels"].shape == (2, *SHAPE)
    save_figure(plot_exemplars(exemplars), tmp_path / "ex.png")
    grid = layer_grid(colour_model, "Conv2D_1", colour_data.test_images[0])
    save_figure(plot_layer_grid(grid), tmp_path / "grid.png")


@pytest.mark.mnist  # Needs no MNIST: in that tier for its site (the fast tier stays under 2 minutes).
def test_site_draws_colour_exemplars_untouched_beside_their_activation(colour_model, colour_data, tmp_path):
    """A red tint would turn colour exemplars brown: colour images keep their pixels, the activation beside them."""
    import re

    import jaxoip
    from jaxoip.analysis.data_views import data_views
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.site import write_scan_site
    from jaxoip.site.images import exemplar_tiles, heat_colours

    ex = find_exemplars(colour_model, colour_data, "Conv2D_1", k=2)
    views = data_views(colour_model, colour_data, "Conv2D_1", ex)
    m = int(np.flatnonzero(~ex.dead)[0])
    assert views.colour and views.images[m].shape == (2, 32, 32, 3) and views.heat[m].shape == (2, 32, 32)
    tiles = exemplar_tiles(views.images[m], views.heat[m])
    assert tiles.shape == (2, 32, 2 * 32 + 1, 3)
    for tile, n in zip(tiles, ex.image_indices[m]):
        np.testing.assert_array_equal(tile[:, :32], colour_data.test_images[n] / 255.0)  # Not tinted.
        assert np.isnan(tile[:, 32]).all()  # A white column between image and heat map.
        heat = tile[:, 33:]
        assert heat.max() == 1.0 and heat.min() == 0.0  # Black where the map is silent, white at its peak.
        np.testing.assert_allclose(heat, heat_colours(heat.sum(axis=-1) / 3), atol=1e-6)  # One ramp of one value.
    result = jaxoip.scan_maps(
        colour_model, "Conv2D_1", [m], 2, OIPConfig(steps=3), precursor_starts=4, screen=2, progress=False,
        quality=None,
    )  # fmt: skip
    write_scan_site(result, tmp_path, exemplars=ex, views=views)
    page = (tmp_path / "site" / f"map{m:03d}.html").read_text()
    assert "each beside its activation" in page and "activation (red) over" not in page
    widths = re.findall(r'<span style="width: (\d+)px">image \d+', page)
    assert widths == [str((2 * 32 + 1) * 3 + 3)] * 2  # Captions span the image and its heat map.
