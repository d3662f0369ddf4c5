"""Objectives as values and the scan planned once (no MNIST: the shipped reference model, planted models)."""

import numpy as np
import pytest

from jaxoip.errors import JaxoipError, LayerError
from jaxoip.models.checkpoint import load_reference_model
from jaxoip.oip import config as config_lib
from jaxoip.oip import objectives as objectives_lib
from jaxoip.oip.config import OIPConfig
from jaxoip.oip.objectives import Objective, channel, from_config, objective
from jaxoip.oip.plan import ScanPlan, plan_scan
from jaxoip.oip.scan import scan_layer
from jaxoip.oip.search import search_oips
from jaxoip.oip.targets import Target


@pytest.fixture(scope="module")
def ref():
    return load_reference_model()


def test_objectives_compose_like_lucents(ref):
    dense2 = ref.model.layer("Dense_2")
    assert objective(dense2).quantity == "pre"  # auto: a softmax layer's logits.
    diff = channel(dense2, 4) - channel(dense2, 9)
    assert diff.weighted == (Target.parse("Dense_2", "4-9").terms,)
    mix = 0.5 * channel(dense2, 3) + channel(dense2, 8) * 0.5
    assert mix.weighted == (((3, 0.5), (8, 0.5)),)
    assert (-diff).weighted == (((4, -1.0), (9, 1.0)),)
    # A one-target objective adds to every target of a family.
    family = objective(dense2) + channel(dense2, 0)
    assert family.n_targets == 10 and family.weighted[3] == ((0, 1.0), (3, 1.0)) and family.weighted[0] == ((0, 2.0),)
    with pytest.raises(JaxoipError, match="only on the same layer"):
        channel(dense2, 1) + channel(ref.model.layer("Dense_1"), 1)
    with pytest.raises(JaxoipError, match="is zero"):
        channel(dense2, 4) - channel(dense2, 4)


def test_minimizing_is_the_negated_pre_activation(ref):
    conv3 = ref.model.layer("Conv2D_3")
    obj = objective(conv3)
    assert obj.wakes and not obj.custom  # The default: ReLU maps, wake-up on, the per-map path.
    negated, idx = obj.minimizing([5, 9])
    assert negated.quantity == "pre" and not negated.wakes and negated.selective == 0
    assert negated.weighted == (((5, -1.0),), ((9, -1.0),)) and idx.tolist() == [0, 1]
    sums = objective(ref.model.layer("Dense_2"), weighted=(((4, 1.0), (9, -1.0)), ((7, 2.0),)))
    assert sums.minimizing([1])[0].weighted == (((7, -2.0),),)


def test_objective_values_are_checked_once_and_in_one_line(ref):
    conv3 = ref.model.layer("Conv2D_3")
    with pytest.raises(LayerError, match="map index 128 out of range: Conv2D_3 has maps 0..127"):
        objective(conv3).check_targets([0, 128])
    with pytest.raises(LayerError, match="must be integers"):
        objective(conv3).check_targets([0.5])
    with pytest.raises(LayerError, match="outside the 3x3 maps"):
        objective(conv3, node=(5, 5))
    with pytest.raises(JaxoipError, match="does not apply to weighted targets"):
        objective(conv3, weighted=(((0, 1.0),),), selective=1.0)
    with pytest.raises(JaxoipError, match="resolved layer"):
        Objective("Conv2D_3")
    assert hash(objective(conv3)) == hash(objective(ref.model.layer("Conv2D_3")))  # A static argument.


def test_a_plan_checks_everything_before_any_work(ref, monkeypatch):
    calls = []
    real = Objective.check_targets
    monkeypatch.setattr(Objective, "check_targets", lambda self, maps: calls.append(1) or real(self, maps))
    plan = plan_scan(ref, "Conv2D_3", [0, 3], restarts=2, config=OIPConfig(steps=4), precursor_starts=4, screen=2)
    assert isinstance(plan, ScanPlan) and plan.layer.name == "Conv2D_3" and plan.maps.tolist() == [0, 3]
    assert plan.image_steps == 2 * 2 * 4 and plan.exemplars == 0 and calls == [1]
    # The scan runs the plan and checks no target again.
    monkeypatch.setattr(config_lib, "check_target", lambda *a, **k: pytest.fail("checked again"))
    result = scan_layer(plan, progress=False)
    assert calls == [1] and result.objective.shape == (2, 2) and result.layer_name == "Conv2D_3"
    for bad, message in [
        (dict(layer="Conv2D_9"), "unknown map or vector layer 'Conv2D_9'"),
        (dict(maps=[200]), "map index 200 out of range"),
        (dict(restarts=0), "restarts must be"),
        (dict(node=(1, 1), layer="Dense_1"), "not to the vector layer"),
        (dict(screen=10**9), "--screen 1000000000 needs"),
    ]:
        with pytest.raises(JaxoipError, match=message):
            plan_scan(ref, **{"layer": "Conv2D_3", **bad})


def test_search_takes_a_name_or_an_objective(ref):
    x0 = np.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), np.float32)
    cfg = OIPConfig(steps=3)
    by_name = search_oips(ref.model, "Conv2D_3", [1, 2], x0, cfg)
    layer = ref.model.layer("Conv2D_3")
    assert from_config(layer) == objectives_lib.objective(layer)  # The options' defaults: wake-up on.
    by_value = search_oips(ref.model, objective(layer), [1, 2], x0, cfg)
    np.testing.assert_array_equal(by_name.images, by_value.images)
    dense2 = ref.model.layer("Dense_2")
    diff = search_oips(ref.model, channel(dense2, 4) - channel(dense2, 9), [0, 0], x0, cfg)
    logits = np.asarray(ref.model(diff.images, until="Dense_2", pre_activation=True))
    np.testing.assert_allclose(diff.objective, logits[:, 4] - logits[:, 9], rtol=1e-4, atol=1e-4)
    with pytest.raises(JaxoipError, match="an Objective holds its node"):
        search_oips(ref.model, objective(layer), [1], x0[:1], cfg, node=(0, 0))
