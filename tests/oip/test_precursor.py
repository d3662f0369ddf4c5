import numpy as np
from planted import COARSE, DEAD, planted_model

from jaxoip.oip.noise import DEFAULT_RECIPES
from jaxoip.oip.precursor import data_activation, precursor_scan


def test_planted_coarse_map_and_dead_map():
    trained = planted_model()
    pre = precursor_scan(trained.model, "Conv2D_2", DEFAULT_RECIPES, starts=64, key=0)
    recipes = list(pre.recipes)
    assert pre.frac_active.shape == (2, len(DEFAULT_RECIPES))
    # The coarse detector never fires on fine noise but does on coarse fluctuations.
    assert pre.frac_active[COARSE, recipes.index("fine")] == 0
    assert pre.frac_active[COARSE].max() > 0.2
    assert recipes[pre.best_recipe[COARSE]] in ("coarse3", "coarse7", "coarse14")
    assert pre.silent_on_noise.tolist() == [True, False]
    assert np.all(pre.max[DEAD] == 0)
    table = pre.table()
    assert table.loc[COARSE, "best_recipe"] == recipes[pre.best_recipe[COARSE]]
    assert bool(table.loc[DEAD, "silent_on_noise"])


def test_data_activation_matches_direct_pass(tiny_trained, mnist):
    x = tiny_trained.standardization(mnist.test_images[:50])
    acts = data_activation(tiny_trained.model, x, "Conv2D_3")
    direct = np.asarray(tiny_trained.model(x, until="Conv2D_3")).mean(axis=(1, 2))
    np.testing.assert_allclose(acts, direct, rtol=1e-4, atol=1e-5)
    node = data_activation(tiny_trained.model, x, "Conv2D_3", node=(1, 2))
    np.testing.assert_allclose(node, np.asarray(tiny_trained.model(x, until="Conv2D_3"))[:, 1, 2], rtol=1e-4, atol=1e-5)
