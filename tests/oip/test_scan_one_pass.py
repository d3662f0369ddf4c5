"""The scan's exemplars come from its data pass: one pass over the test images, the same exemplars as a
separate `find_exemplars` and the same data columns as a scan without exemplars (issue 28)."""

import numpy as np
import pytest

from jaxoip.analysis.exemplars import find_exemplars
from jaxoip.data.mnist import MNIST
from jaxoip.oip.config import ObjectiveConfig, OIPConfig
from jaxoip.oip.scan import scan_maps

SMALL = dict(map_indices=[0, 5, 9], restarts=1, precursor_starts=4, screen=1, progress=False, quality=None)


@pytest.fixture(scope="module")
def data(mnist):
    """700 test images: more than one batch of the layer pass (500), so a padded last batch is covered."""
    train, test = (mnist.train_images[:64], mnist.train_labels[:64]), (mnist.test_images[:700], mnist.test_labels[:700])
    return MNIST(*train, *test, "x")


def _same_exemplars(a, b):
    for field in ("image_indices", "values", "nodes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    for pa, pb in zip(a.patches, b.patches):
        np.testing.assert_array_equal(pa, pb)


@pytest.mark.parametrize("quantity", ["auto", pytest.param("pre", marks=pytest.mark.slow)])
def test_scan_exemplars_match_find_exemplars(reference, data, quantity):
    """Default target: found in the data pass; `pre` (another objective): a separate pass. Same exemplars, and
    the data columns are those of a scan without exemplars, to the bit."""
    cfg, options = OIPConfig(steps=5), ObjectiveConfig(quantity=quantity)
    with_ex = scan_maps(reference, "Conv2D_2", config=cfg, data=data, exemplars=3, options=options, **SMALL)
    without = scan_maps(reference, "Conv2D_2", config=cfg, data=data, options=options, **SMALL)
    assert without.exemplars is None
    _same_exemplars(with_ex.exemplars, find_exemplars(reference, data, "Conv2D_2", k=3))
    np.testing.assert_array_equal(with_ex.data_mean, without.data_mean)
    np.testing.assert_array_equal(with_ex.data_max, without.data_max)
    np.testing.assert_array_equal(with_ex.oip.images, without.oip.images)


def test_scan_has_no_exemplars_where_there_are_none(reference, data):
    """A dense layer, a node target or no data: no exemplars, as the command had it."""
    cfg = OIPConfig(steps=5)
    assert scan_maps(reference, "Dense_1", config=cfg, data=data, exemplars=3, **SMALL).exemplars is None
    assert scan_maps(reference, "Conv2D_2", config=cfg, node=(1, 1), data=data, exemplars=3, **SMALL).exemplars is None
    assert scan_maps(reference, "Conv2D_2", config=cfg, exemplars=3, **SMALL).exemplars is None
