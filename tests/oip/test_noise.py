import jax
import numpy as np
import pytest

from jaxoip.errors import JaxoipError
from jaxoip.oip.noise import RECIPES, Recipe, get_recipes, initial_images, start_keys


def test_starts_are_standardized_and_deterministic():
    keys = start_keys(3, [0, 5], 4).reshape(-1)
    a = initial_images(keys, ["study"])
    b = initial_images(keys, ["study"])
    assert a.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(a.std(axis=(1, 2, 3)), 1, atol=1e-4)
    assert len({float(x) for x in a[:, 0, 0, 0]}) == 8  # Every start differs.


def test_each_start_depends_only_on_its_key():
    keys = start_keys(0, [0, 1, 2], 2).reshape(-1)
    idx = np.array([0, 1, 2, 3, 4, 0])
    full = initial_images(keys, list(RECIPES), idx)
    alone = initial_images(keys[3:4], list(RECIPES), idx[3:4])
    np.testing.assert_allclose(full[3:4], alone, atol=1e-6)
    # Start (map 2, restart 1) is the same whichever maps are in the sweep.
    np.testing.assert_array_equal(
        jax.random.key_data(start_keys(0, [2], 2)[0, 1]), jax.random.key_data(start_keys(0, [0, 1, 2], 2)[2, 1])
    )


def _neighbour_correlation(imgs):
    x = np.asarray(imgs)[..., 0]
    a, b = x[:, :, :-1].reshape(-1), x[:, :, 1:].reshape(-1)
    return np.corrcoef(a, b)[0, 1]


def test_coarse_noise_is_smooth_fine_noise_is_not():
    keys = start_keys(1, [0], 32).reshape(-1)
    fine = _neighbour_correlation(initial_images(keys, ["fine"]))
    coarse = _neighbour_correlation(initial_images(keys, ["coarse3"]))
    assert abs(fine) < 0.1 and coarse > 0.9


def test_smoothing_makes_fine_noise_correlated():
    keys = start_keys(1, [0], 16).reshape(-1)
    smooth = Recipe("smooth", (0, 0, 0, 1.0), smoothing_sigma=1.5)
    assert _neighbour_correlation(initial_images(keys, [smooth])) > 0.6


def test_bad_recipes():
    with pytest.raises(JaxoipError, match="unknown noise recipe"):
        get_recipes(["pink"])
    with pytest.raises(JaxoipError, match="factors"):
        Recipe("x", (1.0, 2.0))
    with pytest.raises(JaxoipError, match="all factors are zero"):
        Recipe("x", (0, 0, 0, 0))


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_start_images_compiled_for_speed_of_compilation_are_the_same_bits(shape):
    """The start-image programs use `numerics.FAST_COMPILE` (XLA's backend level 1); they must give exactly
    what XLA's default level gives, for every built-in recipe, or a scan's starts would change."""
    import functools

    from jaxoip.oip import noise, precursor

    recipes = get_recipes(tuple(RECIPES))
    default = jax.jit(functools.partial(noise.start_images, recipes=recipes, shape=shape))
    keys = start_keys(0, list(range(len(recipes))), 3).reshape(-1)
    idx = np.repeat(np.arange(len(recipes), dtype=np.int32), 3)
    np.testing.assert_array_equal(initial_images(keys, recipes, idx, shape), np.asarray(default(keys, idx)))
    got = precursor._precursor_images(np.uint32(7), recipes=recipes, starts=4, shape=shape)
    root = jax.random.fold_in(jax.random.key(np.uint32(7)), precursor.PRECURSOR_STREAM)
    keys = precursor._recipe_keys(root, len(recipes), 4)
    want = default(keys, np.repeat(np.arange(len(recipes), dtype=np.int32), 4))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
