import jax
import jax.numpy as jnp
import numpy as np
import pytest
from planted import LIVE_NODE, planted_dense_model, ring_pattern

from jaxoip.errors import JaxoipError
from jaxoip.oip import transforms
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.param import fourier_scale, to_image, to_params
from jaxoip.oip.search import OIPConfig, search_oips

ROBUST = transforms.style_config("robust", steps=30)


def _starts(n, recipe="study"):
    return np.asarray(initial_images(start_keys(0, np.arange(n), 1).reshape(-1), [recipe]))


def test_styles():
    assert transforms.style_config("study") == OIPConfig()
    assert ROBUST.jitter == 2 and ROBUST.rotate == 10 and ROBUST.tv > 0 and ROBUST.steps == 30
    assert transforms.style_config("robust", tv=0.0).tv == 0.0
    with pytest.raises(JaxoipError, match="unknown style"):
        transforms.style_config("lucid")


def test_identity_transform_and_pure_shift():
    img = jnp.asarray(_starts(1)[0])
    key = jax.random.key(0)
    np.testing.assert_allclose(transforms.random_affine(key, img, 0.0, 0.0, 0.0), img, atol=1e-5)
    shifted = np.asarray(transforms.random_affine(key, img, 3.0, 0.0, 0.0))
    assert not np.allclose(shifted, img)
    # A shift moves the pattern without changing its values much (bilinear).
    assert abs(shifted.std() - float(img.std())) < 0.2


def test_image_keys_follow_the_image_not_the_batch():
    x = jnp.asarray(_starts(4))
    maps = jnp.arange(4)
    all_keys = jax.random.key_data(transforms.image_keys(0, x, maps))
    one = jax.random.key_data(transforms.image_keys(0, x[2:3], maps[2:3]))
    np.testing.assert_array_equal(all_keys[2], one[0])
    assert len({tuple(k) for k in np.asarray(all_keys)}) == 4
    other_seed = jax.random.key_data(transforms.image_keys(1, x, maps))
    assert not np.array_equal(other_seed, all_keys)


def test_robust_result_independent_of_batch(tiny_trained):
    maps = np.array([0, 3, 5, 7])
    x0 = _starts(4)
    batched = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, ROBUST)
    for i in (1, 3):
        alone = search_oips(tiny_trained.model, "Conv2D_3", maps[i : i + 1], x0[i : i + 1], ROBUST)
        np.testing.assert_allclose(alone.images[0], batched.images[i], atol=5e-3)
    again = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, ROBUST)
    np.testing.assert_array_equal(again.images, batched.images)
    # The transformations do change the search.
    plain = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, OIPConfig(steps=30))
    assert not np.allclose(plain.images, batched.images, atol=0.05)


def test_tv_penalty_lowers_total_variation(tiny_trained):
    maps = np.array([0, 3, 5, 7])
    x0 = _starts(4, "fine")
    tv = jax.vmap(transforms.total_variation)
    plain = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, OIPConfig(steps=40))
    reg = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, OIPConfig(steps=40, tv=2.0))
    assert np.all(np.asarray(tv(jnp.asarray(reg.images))) < np.asarray(tv(jnp.asarray(plain.images))))
    blurred = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, OIPConfig(steps=40, blur=20.0))
    assert np.asarray(tv(jnp.asarray(blurred.images))).mean() < np.asarray(tv(jnp.asarray(plain.images))).mean()
    np.testing.assert_allclose(reg.images.std(axis=(1, 2, 3)), 1, atol=1e-3)


def test_fourier_round_trip():
    img = jnp.asarray(_starts(1)[0])
    np.testing.assert_allclose(to_image("fourier", to_params("fourier", img), (28, 28)), img, atol=1e-5)
    scale = fourier_scale(28, 28, 1.0)
    assert scale.shape == (28, 15) and scale[0, 0] == scale.max() and abs(np.sqrt((scale**2).mean()) - 1) < 1e-5


@pytest.mark.parametrize(
    "cfg",
    [
        OIPConfig(steps=200, epsilon=0.05, param="fourier"),
        transforms.style_config("robust", steps=200, epsilon=0.05),
        transforms.style_config("robust", steps=200, epsilon=0.05, param="fourier"),
    ],
    ids=["fourier", "robust", "robust-fourier"],
)
def test_planted_pattern_recovered(cfg):
    """The ring maximizes the planted node; the Fourier and robust searches find it from noise."""
    trained = planted_dense_model()
    x0 = _starts(3, "fine")
    res = search_oips(trained.model, "Dense_1", np.full(3, LIVE_NODE), x0, cfg)
    ring = np.asarray(ring_pattern()).reshape(-1)
    corr = res.images.reshape(3, -1) @ ring / ring.size
    assert np.all(corr > 0.9), corr
    np.testing.assert_allclose(res.images.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(res.images.std(axis=(1, 2, 3)), 1, atol=1e-3)
