import jax.numpy as jnp
import numpy as np

from jaxoip.oip import facets
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.search import OIPConfig, SearchSetup, search_oips


def _blob(cy, cx, size=28):
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)


def _ring(size=28):
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((np.hypot(yy - 13.5, xx - 13.5) - 8) ** 2) / 2.0)


def _standardized(img):
    return ((img - img.mean()) / img.std())[..., None]


def test_facets_group_shifted_copies():
    bar = np.zeros((28, 28))
    bar[6:22, 12:15] = 1.0
    a = bar + 0.05 * np.random.default_rng(0).normal(size=bar.shape)
    images = np.stack(
        [
            _standardized(a),
            _standardized(np.roll(a, (3, -4), (0, 1))),
            _standardized(bar.T),
            _standardized(np.roll(a, 2, 1)),
            _standardized(_ring()),
        ]
    )
    sim = facets.shift_similarity(images)
    np.testing.assert_allclose(np.diag(sim), 1, atol=1e-6)
    assert sim[0, 1] > 0.8 and sim[0, 2] < 0.5 and sim[:4, 4].max() < 0.5
    objective = np.array([1.0, 3.0, 2.0, 0.5, 0.1])
    f = facets.map_facets(7, images, objective)
    assert f.labels[0] == f.labels[1] == f.labels[3] == 0  # The shifted bars, holding the best start (1).
    assert len({f.labels[2], f.labels[4], 0}) == 3
    assert f.representatives[0] == 1 and f.sizes.tolist()[0] == 3 and f.sizes.sum() == 5
    np.testing.assert_array_equal(f.objectives, objective[f.representatives])


def test_facets_leave_out_zero_starts():
    images = np.stack([_standardized(_blob(10, 10)), _standardized(_blob(14, 20)), _standardized(_blob(5, 5))])
    f = facets.map_facets(0, images, np.array([2.0, 0.0, 1.0]))
    assert f.labels[1] == -1 and f.labels[0] == f.labels[2] == 0


def test_diversity_penalty_and_search(tiny_trained):
    feats = jnp.asarray(np.eye(4, dtype=np.float32)[[0, 0, 1, 2]])
    np.testing.assert_allclose(facets.diversity_penalty(feats, 2), [1, 1, 0, 0])
    maps = np.repeat([3, 5], 4)
    x0 = np.asarray(initial_images(start_keys(0, [3, 5], 4).reshape(-1), ["study"]))
    plain = search_oips(tiny_trained.model, "Conv2D_3", maps, x0, OIPConfig(steps=40))
    diverse = search_oips(
        tiny_trained.model, "Conv2D_3", maps, x0, OIPConfig(steps=40, diversity=5.0), setup=SearchSetup(group=4)
    )
    assert not np.allclose(plain.images, diverse.images, atol=0.05)
    model = tiny_trained.model
    sim = lambda r: np.asarray(facets.diversity_penalty(facets.gram_features(model, jnp.asarray(r.images)), 4))
    assert sim(diverse).mean() < sim(plain).mean()
