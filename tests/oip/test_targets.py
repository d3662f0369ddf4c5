import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from planted import ASLEEP_NODE, COARSE, DEAD, LIVE_NODE, planted_dense_model, planted_model, ring_pattern

from jaxoip.errors import JaxoipError, LayerError
from jaxoip.oip.config import ObjectiveConfig
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.objectives import from_config
from jaxoip.oip.search import OIPConfig, make_search, search_oips
from jaxoip.oip.targets import Target, parse_terms, search_arguments


@pytest.mark.parametrize(
    "text, terms",
    [
        ("4", ((4, 1.0),)),
        ("4-9", ((4, 1.0), (9, -1.0))),
        ("4,-1*9", ((4, 1.0), (9, -1.0))),
        ("0.5*3+0.5*8", ((3, 0.5), (8, 0.5))),
        ("-2*1, 3 + 1", ((1, -1.0), (3, 1.0))),
        ("1e-1*2", ((2, 0.1),)),
    ],
)
def test_parse_terms(text, terms):
    assert parse_terms(text) == terms


@pytest.mark.parametrize("text", ["", "4*", "x", "4--9", "2*-3"])
def test_parse_terms_rejects(text):
    with pytest.raises(JaxoipError):
        parse_terms(text)


def test_target_label_round_trip():
    t = Target.parse("Dense_2", "4,-1*9")
    assert t.label == "4-9" and Target.parse("Dense_2", t.label) == t
    assert Target.parse("Dense_2", "0.5*3+0.5*8").label == "0.5*3+0.5*8"


def _starts(n, seed=0):
    return np.asarray(initial_images(start_keys(seed, np.arange(n), 1).reshape(-1), ["study"]))


def test_study_config_is_bit_identical_to_the_study_search(tiny_trained):
    from study_search import make_study_search

    graphdef, params = nnx.split(tiny_trained.model)
    maps = np.array([0, 3, 5, 7], np.int32)
    x0 = _starts(4)
    cfg = OIPConfig(steps=25)
    objective = from_config(tiny_trained.model.layer("Conv2D_3"), None, ObjectiveConfig(wake=False))
    new = jax.device_get(jax.jit(make_search(graphdef, objective, cfg))(params, x0, maps))
    old = jax.device_get(jax.jit(make_study_search(graphdef, "Conv2D_3", cfg, None))(params, x0, maps))
    for k in old:
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    assert not new["woken"].any()


def test_weighted_target_is_logit_difference(tiny_trained):
    layer, maps, node, weighted = search_arguments([Target.parse("Dense_2", "4-9")])
    assert weighted == (((4, 1.0), (9, -1.0)),)
    x0 = _starts(3)
    res = search_oips(tiny_trained.model, layer, np.repeat(maps, 3), x0, OIPConfig(steps=5), node, weighted=weighted)
    logits = np.asarray(tiny_trained.model(res.images, until="Dense_2", pre_activation=True))
    np.testing.assert_allclose(res.objective, logits[:, 4] - logits[:, 9], rtol=1e-4, atol=1e-4)
    assert np.all(res.traces[:, -1] > res.traces[:, 0])


def test_class_target_raises_its_probability(tiny_trained):
    x0 = _starts(4)
    res = search_oips(tiny_trained.model, "Dense_2", np.full(4, 4), x0, OIPConfig(steps=20))
    before = np.asarray(tiny_trained.model(x0))[:, 4]
    after = np.asarray(tiny_trained.model(res.images))[:, 4]
    assert np.all(after > 10 * before) and after.mean() > 0.3
    # The default objective on a softmax layer is the class logit.
    logits = np.asarray(tiny_trained.model(res.images, until="Dense_2", pre_activation=True))
    np.testing.assert_allclose(res.objective, logits[:, 4], rtol=1e-4, atol=1e-4)
    activation = ObjectiveConfig(quantity="activation")
    prob = search_oips(tiny_trained.model, "Dense_2", np.full(4, 4), x0, OIPConfig(steps=3), options=activation)
    np.testing.assert_allclose(prob.objective, np.asarray(tiny_trained.model(prob.images))[:, 4], rtol=1e-4)


def test_dense_node_recovers_planted_pattern():
    trained = planted_dense_model()
    x0 = _starts(2)
    # The pre-activation: a start that the ReLU zeroes still has a gradient.
    cfg = OIPConfig(steps=150, epsilon=0.05)
    res = search_oips(trained.model, "Dense_1", np.full(2, LIVE_NODE), x0, cfg, options=ObjectiveConfig(quantity="pre"))
    ring = np.asarray(ring_pattern()).reshape(-1)
    corr = res.images.reshape(2, -1) @ ring / ring.size
    assert np.all(corr > 0.95), corr


def test_wake_reaches_a_node_dead_on_noise():
    trained = planted_dense_model()
    x0 = _starts(3)
    maps = np.full(3, ASLEEP_NODE)
    cfg = OIPConfig(steps=150, epsilon=0.05)
    plain = search_oips(trained.model, "Dense_1", maps, x0, cfg, options=ObjectiveConfig(wake=False))
    assert np.all(plain.objective == 0) and plain.stayed_zero.all()
    woken = search_oips(trained.model, "Dense_1", maps, x0, cfg, options=ObjectiveConfig(wake=True))
    assert np.all(woken.objective > 0) and woken.woken.all() and not woken.stayed_zero.any()


def test_wake_conv_map_silent_on_fine_noise():
    trained = planted_model()  # Threshold 80: no fine-noise start reaches it.
    x0 = np.asarray(initial_images(start_keys(0, [DEAD, COARSE], 3).reshape(-1), ["fine"]))
    maps = np.repeat([DEAD, COARSE], 3)
    plain = search_oips(trained.model, "Conv2D_2", maps, x0, OIPConfig(steps=40), options=ObjectiveConfig(wake=False))
    assert np.all(plain.objective == 0)
    res = search_oips(trained.model, "Conv2D_2", maps, x0, OIPConfig(steps=40), options=ObjectiveConfig(wake=True))
    assert np.all(res.objective[3:] > 0) and res.woken[3:].all()
    # A map with zero weights has a constant pre-activation: nothing can wake it, and that is reported.
    assert np.all(res.objective[:3] == 0) and res.stayed_zero[:3].all()


@pytest.mark.parametrize(
    "layer, maps, node, weighted, match",
    [
        ("Flatten", [0], None, (), "map or vector layer"),
        ("Dense_2", [10], None, (), "dense node 10 out of range"),
        ("Dense_1", [0], (0, 0), (), "not to the vector layer"),
        ("Dense_2", [1], None, (((4, 1.0),),), "weighted target 1 out of range"),
        ("Dense_2", [0], None, (((12, 1.0),),), "dense node 12 out of range"),
    ],
)
def test_bad_targets(tiny_trained, layer, maps, node, weighted, match):
    with pytest.raises(LayerError, match=match):
        search_oips(tiny_trained.model, layer, maps, _starts(1), OIPConfig(steps=2), node=node, weighted=weighted)


def test_config_validation():
    with pytest.raises(JaxoipError, match="parameterization"):
        OIPConfig(param="wavelet")
    with pytest.raises(JaxoipError, match="quantity"):
        ObjectiveConfig(quantity="logits")
    with pytest.raises(JaxoipError, match="tv must be at least 0"):
        OIPConfig(tv=-1)
    # Configs stay hashable (one compiled search per config).
    assert hash(dataclasses.replace(OIPConfig(), tv=0.5)) and hash(ObjectiveConfig(selective=1))
