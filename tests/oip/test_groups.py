"""Saved search groups: reused when the search is the same, searched again with one line when it is not."""

import numpy as np

from jaxoip.models.checkpoint import load_reference_model
from jaxoip.oip.config import OIPConfig
from jaxoip.oip.groups import search_in_groups
from jaxoip.oip.objectives import objective


def test_a_group_of_another_search_is_searched_again_with_one_line(tmp_path, capsys):
    trained = load_reference_model()
    obj = objective(trained.model.layer("Conv2D_3"))
    maps = np.array([0, 1], np.int32)
    x0 = np.asarray(np.random.default_rng(1).normal(size=(2, 28, 28, 1)), np.float32)
    first, _ = search_in_groups(trained.model, obj, maps, x0, OIPConfig(steps=3), 2, False, tmp_path)
    saved = tmp_path / "group_00000.npz"
    again, earlier = search_in_groups(trained.model, obj, maps, x0, OIPConfig(steps=3), 2, False, tmp_path)
    assert earlier > 0 and capsys.readouterr().err == ""  # Reused.
    np.testing.assert_array_equal(again.images, first.images)
    with np.load(saved) as z:
        parts = {k: z[k] for k in z.files}
    np.savez(saved, **{**parts, "key": "made by an older jaxoip"})
    redone, earlier = search_in_groups(trained.model, obj, maps, x0, OIPConfig(steps=3), 2, False, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert earlier == 0 and len(err) == 1 and "was made by another search" in err[0]
    np.testing.assert_array_equal(redone.images, first.images)
