"""Issue 26: OIPs that are real images (`OIPConfig.pixel_range`), for every parameterization."""

import numpy as np
import pytest

import jaxoip
from jaxoip.errors import JaxoipError
from jaxoip.oip.config import OIPConfig
from jaxoip.oip.search import SearchSetup, search_oips
from tests.oip.test_quality import STD, planted_quality_model


@pytest.mark.parametrize("param", ["pixels", "fourier", "maco"])
@pytest.mark.parametrize("pixel_range", ["clip", "sigmoid"])
def test_constrained_oips_are_images(mnist, param, pixel_range):
    """Every pixel of every start's final OIP and snapshot lies in [0, 255]; the unconstrained search leaves it."""
    trained = planted_quality_model()
    kw = dict(restarts=2, precursor_starts=8, screen=2, seed=1, progress=False, quality=None)
    kw["data"] = mnist if param == "maco" else None
    cfg = OIPConfig(steps=40, epsilon=0.05, param=param)
    free = jaxoip.scan_maps(trained, "Dense_2", config=cfg, **kw)
    res = jaxoip.scan_maps(trained, "Dense_2", config=OIPConfig(**{**vars(cfg), "pixel_range": pixel_range}), **kw)
    plan = jaxoip.plan_scan(trained, "Dense_2", config=res.config, restarts=2)
    assert plan.setup.pixel_mean == (STD.mean,) and plan.setup.pixel_std == (STD.std,) and plan.setup.seed == 0
    for images in (res.images, res.oip.snapshots):
        pixels = STD.to_pixels(images.astype(np.float64))
        assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3, (pixels.min(), pixels.max())
    assert STD.to_pixels(free.images.astype(np.float64)).min() < -1  # The range binds.
    assert (res.objective > 0).any()  # The constrained search still drives its maps.


def test_pixel_range_checked():
    with pytest.raises(JaxoipError, match="unknown pixel range 'box'"):
        OIPConfig(pixel_range="box")
    with pytest.raises(JaxoipError, match="same length"):
        SearchSetup(pixel_mean=(1.0, 2.0), pixel_std=(1.0,))
    trained = planted_quality_model()
    x0 = np.zeros((1, 28, 28, 1), np.float32)
    with pytest.raises(JaxoipError, match="needs the model's standardization"):
        search_oips(trained.model, "Dense_2", [0], x0, OIPConfig(steps=2, pixel_range="clip"))


@pytest.mark.parametrize("pixel_range", ["clip", "sigmoid"])
def test_colour_channels_have_their_own_range(pixel_range):
    """Per-channel standardization: each channel's pixels stay in [0, 255] through a start and a step."""
    import jax.numpy as jnp

    from jaxoip.data.mnist import Standardization
    from jaxoip.oip.search import pixel_range_maps

    std = Standardization((120.0, 110.0, 100.0), (60.0, 65.0, 70.0))
    finish, view, start = pixel_range_maps(OIPConfig(pixel_range=pixel_range), SearchSetup.of(std), 3)
    x = jnp.asarray(np.random.default_rng(0).normal(0, 3, (2, 8, 8, 3)), jnp.float32)
    for images in (view(start(x)), view(jnp.stack([finish(img) for img in start(x) * 5]))):
        pixels = std.to_pixels(np.asarray(images, np.float64))
        assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
        assert np.ptp(pixels[..., 0]) > 50  # Not collapsed to one value.
