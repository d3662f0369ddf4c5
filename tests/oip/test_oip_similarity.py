"""OIP similarity: shift invariance, silent starts left out, cross-activation, ceilings above floors."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from planted import DEAD, planted_model
from scipy.ndimage import gaussian_filter

from jaxoip.data.mnist import Standardization
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.oip.search import OIPConfig
from jaxoip.oip.similarity import (
    cross_activation,
    restart_pair_means,
    shift_similarity,
    shift_similarity_matrix,
    similar_maps,
)
from jaxoip.seeds.compare import CompareConfig
from jaxoip.seeds.oips import map_oips, oip_pair_metrics, pair_oip_measures


def _blobs(seed=0, size=40):
    """A smooth random pattern: unlike stripes, its negative is not one of its own translations."""
    return gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 2.0)


def test_shifted_copy_scores_one_and_its_negative_only_without_sign():
    big = _blobs()
    a = big[4:32, 4:32]
    shifted = big[7:35, 1:29]  # The same pattern moved by (3, -3) pixels, new content at the edges.
    noise = np.random.default_rng(1).normal(size=(28, 28))
    imgs = lambda *xs: np.stack(xs)[..., None]
    signed, unsigned = shift_similarity(imgs(a, a, a, a), imgs(shifted, 3.0 * shifted - 1.0, -shifted, noise))
    np.testing.assert_allclose(signed[:2], 1.0, atol=1e-4)  # Shift and contrast change.
    np.testing.assert_allclose(unsigned[:3], 1.0, atol=1e-4)  # Contrast inversion too, without the sign.
    assert signed[2] < 0.6 and unsigned[3] < 0.4 and signed[3] < 0.4
    pixel = np.corrcoef(a.ravel(), shifted.ravel())[0, 1]
    assert abs(pixel) < 0.5  # Pixel correlation misses it; with no shift allowed, so does this measure.
    np.testing.assert_allclose(shift_similarity(imgs(a), imgs(shifted), max_shift=0)[0][0], pixel, atol=1e-4)
    # The matrix form agrees with the paired form, entry by entry.
    s, u = shift_similarity_matrix(imgs(a, noise), imgs(shifted, noise, -a))
    np.testing.assert_allclose(np.asarray(s)[0, 0], signed[0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(s)[1, 1], 1.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(u)[0, 2], 1.0, atol=1e-4)


def test_similar_maps_name_each_maps_nearest_others_most_similar_first():
    big = _blobs()
    a, shifted, other = big[4:32, 4:32], big[7:35, 1:29], _blobs(seed=5)[4:32, 4:32]
    faint = 0.5 * a + 0.5 * other  # Between the two: second nearest to both.
    best = np.stack([a, other, shifted, faint])[..., None]
    order, r = similar_maps(best, k=2)
    assert order.shape == r.shape == (4, 2)
    assert order[0].tolist() == [2, 3] and order[2, 0] == 0  # A map and its shifted copy: each other's nearest.
    assert (order != np.arange(4)[:, None]).all()  # Never a map itself.
    assert (np.diff(r, axis=1) <= 0).all() and r[0, 0] > 0.99
    colour = np.repeat(best, 3, axis=-1)  # Colour OIPs are compared by their brightness.
    np.testing.assert_array_equal(similar_maps(colour, k=2)[0], order)
    assert similar_maps(best[:1])[0].shape == (1, 0)  # One map: no others.


def test_restart_pair_means_leave_out_silent_starts():
    m, r = 2, 3
    s = np.full((m, r, m, r), 0.2)
    s[0, :, 0, :] = 0.8  # Matched maps alike ...
    s[0, 2, 0, :] = s[0, :, 0, 2] = -5.0  # ... except through start 2, which is silent.
    live = np.ones((m, r), bool)
    live[0, 2] = False
    out = restart_pair_means(s, s, s, live, live)
    np.testing.assert_allclose(out["cross"][0], 0.8)
    np.testing.assert_allclose(out["ceiling"][0], 0.8)
    np.testing.assert_allclose(out["floor"], 0.2)
    dead = np.zeros((m, r), bool)
    assert np.all(np.isnan(restart_pair_means(s, s, s, dead, live)["cross"]))


def test_cross_activation_relative_to_own_response():
    own = np.array([[2.0, 4.0], [1.0, 1.0]])  # Map j of b on its own OIPs.
    response = np.zeros((2, 2, 2))  # [a's map i, start r, b's map j]
    response[0, :, 0] = [3.0, 3.0]  # b's map 0 responds to a's matched OIPs as to its own (mean 3).
    response[1, :, 0] = [0.3, 0.3]  # ... and weakly to a's other map.
    response[1, :, 1] = [0.5, 9.0]  # Start 1 of a's map 1 is silent: its value must not count.
    live_a = np.array([[True, True], [True, False]])
    out = cross_activation(response, own, live_a, np.ones((2, 2), bool))
    np.testing.assert_allclose(out["cross"], [1.0, 0.5])
    np.testing.assert_allclose(out["floor"][0], 0.1)
    np.testing.assert_allclose(out["ceiling"], [(2 / 4 + 4 / 2) / 2, 1.0])


ORIENTED = ModelConfig(conv=((3, 3, "relu"),), pool=(), dense=((10, "softmax"),))


def _oriented_model() -> TrainedModel:
    """Conv2D_1 maps: a vertical, a horizontal and a diagonal edge detector."""
    model = init_model(ORIENTED, 0)
    d = jnp.asarray([-1.0, 0.0, 1.0])
    k = jnp.stack([jnp.tile(d, (3, 1)), jnp.tile(d[:, None], (1, 3)), jnp.eye(3)[::-1] - jnp.eye(3)], -1)
    state = nnx.state(model, nnx.Param)
    state["Conv2D_1"]["kernel"][...] = k[:, :, None, :]
    state["Conv2D_1"]["bias"][...] = jnp.zeros((3,))
    nnx.update(model, state)
    return TrainedModel(model=model, standardization=Standardization(0.0, 1.0))


def test_model_against_itself_cross_activation_one_ceiling_above_floor():
    trained = _oriented_model()
    cfg = CompareConfig(  # The default source, the improved search; large steps so that 30 suffice.
        layers=("Conv2D_1",),
        oip_layer="Conv2D_1",
        oip_restarts=3,
        oip_maps=3,
        oip=OIPConfig(steps=30, epsilon=0.1),
    )
    oips = map_oips(trained, "Conv2D_1", [0, 1, 2], cfg)
    assert oips.images.shape == (3, 3, 28, 28, 1) and oips.live.all()
    out = pair_oip_measures(trained, trained, "Conv2D_1", oips, oips, cfg.oip_max_shift)
    np.testing.assert_allclose(out["xact"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["xact_ab"], out["xact_ba"], rtol=1e-6)
    for measure in ("shift", "shift_unsigned", "xact"):
        assert np.all(out[f"{measure}_ceiling"] > out[f"{measure}_floor"] + 0.1), measure
    assert np.all(out["shift"] <= out["shift_unsigned"] + 1e-6)


def test_silent_maps_are_left_out_and_counted():
    trained = planted_model()
    cfg = CompareConfig(
        layers=("Conv2D_2",),
        oip_layer="Conv2D_2",
        oip_restarts=2,
        oip_maps=2,
        oip=OIPConfig(steps=5),
        oip_source="shared",
    )
    oips = map_oips(trained, "Conv2D_2", [0, 1], cfg)
    assert not oips.live[DEAD].any()
    out = pair_oip_measures(trained, trained, "Conv2D_2", oips, oips, 3)
    o = dict(maps_a=oips.maps, maps_b=oips.maps, corr=np.ones(2), **out)
    assert not o["both_live"][DEAD] and np.isnan(out["shift"][DEAD]) and np.isnan(out["xact"][DEAD])
    metrics = oip_pair_metrics(o)
    assert metrics["oip_both_live"] == pytest.approx((~np.isnan(out["xact"])).mean())
    assert metrics["oip_silent_starts"] == 2 * (~oips.live).sum()
    assert all(np.isfinite(v) for v in metrics.values())


def test_bad_oip_settings_are_refused():
    with pytest.raises(JaxoipError, match="unknown OIP source"):
        CompareConfig(oip_source="magic")
    with pytest.raises(JaxoipError, match="unknown OIP scan option 'wake_up_maps'"):
        CompareConfig(oip_scan_options={"wake_up_maps": True})
    with pytest.raises(JaxoipError, match="oip_max_shift"):
        CompareConfig(oip_max_shift=20)
    assert CompareConfig(oip_scan_options={"screen": 2}).oip_scan_options == (("screen", 2),)


@pytest.mark.parametrize("channels", [1, 3])
def test_similarities_compiled_for_speed_of_compilation_are_the_same_bits(channels):
    """`shift_similarity_matrix` and the two-choice observer use `numerics.FAST_COMPILE`: they must give exactly
    what XLA's default level gives, or the facets, neighbours and two-choice measures would change."""
    import jax

    from jaxoip.oip import similarity, two_choice

    rng = np.random.default_rng(channels)
    a, b = (rng.normal(size=(n, 28, 28, channels)).astype(np.float32) for n in (6, 5))
    default = jax.jit(similarity.shift_similarity_matrix.__wrapped__, static_argnames=("max_shift",))
    for got, want in zip(similarity.shift_similarity_matrix(a, b, 7), default(a, b, 7), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    q, r = a.reshape(2, 3, 28, 28, channels), np.concatenate([b, b[:1]]).reshape(2, 3, 28, 28, channels)
    default = jax.jit(two_choice.observer_similarity.__wrapped__, static_argnames=("max_shift",))
    np.testing.assert_array_equal(np.asarray(two_choice.observer_similarity(q, r, 5)), np.asarray(default(q, r, 5)))
