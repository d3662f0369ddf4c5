import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from planted import COARSE, DEAD, planted_model

from jaxoip.errors import LayerError
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.search import OIPConfig, search_oips

CFG = OIPConfig(steps=30)
MAPS = np.array([0, 3, 5, 7, 9, 11])


@pytest.fixture(scope="module")
def starts():
    return np.asarray(initial_images(start_keys(0, MAPS, 1).reshape(-1), ["study"]))


@pytest.fixture(scope="module")
def batched(tiny_trained, starts):
    return search_oips(tiny_trained.model, "Conv2D_3", MAPS, starts, CFG)


def test_objective_rises_for_live_maps(batched):
    live = batched.traces[:, 0] > 0
    assert live.sum() >= 3
    assert np.all(batched.traces[live, -1] > batched.traces[live, 0])
    # Mostly monotone: the normalized-gradient step is small.
    rises = np.diff(batched.traces[live], axis=1) > 0
    assert rises.mean() > 0.9
    assert batched.snapshots.shape == (6, len(CFG.snapshots), 28, 28, 1)
    assert CFG.snapshots == (9, 18, 29)
    np.testing.assert_array_equal(batched.snapshots[:, -1], batched.images)


def test_images_stay_standardized(batched):
    np.testing.assert_allclose(batched.images.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(batched.images.std(axis=(1, 2, 3)), 1, atol=1e-3)


# Batch size changes the blocking of XLA's matmuls, so sums round differently; over these 30 steps the
# last-bit differences stay within IMG_ATOL, but 600 steps amplify them far more (up to about 2 standardized
# units in a pixel; BENCHMARKS.md, "Does the chunk size change the result?").
IMG_ATOL, OBJ_RTOL = 5e-3, 1e-3


def test_batched_equals_one_at_a_time(tiny_trained, starts, batched):
    for i in (0, 2, 5):
        alone = search_oips(tiny_trained.model, "Conv2D_3", MAPS[i : i + 1], starts[i : i + 1], CFG)
        np.testing.assert_allclose(alone.images[0], batched.images[i], atol=IMG_ATOL)
        np.testing.assert_allclose(alone.traces[0], batched.traces[i], rtol=OBJ_RTOL, atol=1e-5)


def test_chunk_size_invariance(tiny_trained, starts, batched):
    chunked = search_oips(tiny_trained.model, "Conv2D_3", MAPS, starts, CFG, chunk_size=4)  # 4 + padded 2.
    np.testing.assert_allclose(chunked.images, batched.images, atol=IMG_ATOL)
    np.testing.assert_allclose(chunked.objective, batched.objective, rtol=OBJ_RTOL, atol=1e-5)


def test_deterministic(tiny_trained, starts, batched):
    again = search_oips(tiny_trained.model, "Conv2D_3", MAPS, starts, CFG)
    np.testing.assert_array_equal(again.images, batched.images)


def test_single_node_objective(tiny_trained, starts):
    res = search_oips(tiny_trained.model, "Conv2D_3", MAPS[:3], starts[:3], CFG, node=(2, 0))
    acts = np.asarray(tiny_trained.model(res.images, until="Conv2D_3"))
    np.testing.assert_allclose(res.objective, acts[np.arange(3), 2, 0, MAPS[:3]], rtol=1e-4, atol=1e-5)
    mean_res = search_oips(tiny_trained.model, "Conv2D_3", MAPS[:3], starts[:3], CFG)
    acts = np.asarray(tiny_trained.model(mean_res.images, until="Conv2D_3"))
    np.testing.assert_allclose(mean_res.objective, acts[np.arange(3), :, :, MAPS[:3]].mean(axis=(1, 2)), rtol=1e-4)


def test_dead_map_is_reported_not_an_error():
    trained = planted_model()
    x0 = np.asarray(initial_images(start_keys(0, [DEAD, COARSE], 4).reshape(-1), ["coarse3"]))
    res = search_oips(trained.model, "Conv2D_2", np.repeat([DEAD, COARSE], 4), x0, OIPConfig(steps=20))
    assert res.stayed_zero[:4].all() and np.all(res.objective[:4] == 0)
    assert np.all(res.converged_step[:4] == -1)
    assert (res.objective[4:] > 0).any()


def test_early_stop_ends_when_all_converged(tiny_trained, starts):
    cfg = OIPConfig(steps=400, conv_criterion=5e-2, early_stop=True)
    res = search_oips(tiny_trained.model, "Conv2D_3", MAPS[:1], starts[:1], cfg)
    if res.objective[0] > 0:
        # The objective of step t is known while step t + 1 runs: the search stops one step later.
        assert res.steps_run < 400 and res.converged_step[0] == res.steps_run - 2
        assert np.all(res.traces[0, res.steps_run :] == res.objective[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer_name="Conv2D_9"), "valid names"),
        (dict(layer_name="Flatten"), "map or vector layer"),
        (dict(map_indices=[128]), "map index 128 out of range"),
        (dict(node=(3, 0)), "outside the 3x3 maps"),
    ],
)
def test_bad_targets(tiny_trained, starts, kwargs, match):
    args = dict(layer_name="Conv2D_3", map_indices=[0], node=None)
    args.update(kwargs)
    with pytest.raises(LayerError, match=match):
        search_oips(tiny_trained.model, args["layer_name"], args["map_indices"], starts[:1], CFG, node=args["node"])


@pytest.mark.slow
def test_sharded_over_four_host_devices(tiny_checkpoint, tmp_path):
    """The same search on 4 forced CPU devices (batch axis sharded) gives the same images, bit for bit: the
    chunk size is per device, so every device gets the batch the single device gets."""
    script = textwrap.dedent(
        f"""
        import jax, numpy as np
        assert len(jax.devices()) == 4, jax.devices()
        from jaxoip.models.checkpoint import load_model
        from jaxoip.oip.noise import initial_images, start_keys
        from jaxoip.oip.search import OIPConfig, search_oips
        m = load_model({str(tiny_checkpoint)!r})
        maps = np.array({MAPS.tolist()})
        x0 = np.asarray(initial_images(start_keys(0, maps, 1).reshape(-1), ["study"]))
        r = search_oips(m.model, "Conv2D_3", maps, x0, OIPConfig(steps=30), chunk_size=3)
        np.savez({str(tmp_path / "sharded.npz")!r}, images=r.images, objective=r.objective)
        """
    )
    # The reference runs in the same context (a CPU process, one device), not on whatever backend the
    # test process has, so the comparison measures the sharding and nothing else.
    for devices, name in ((4, "sharded"), (1, "single")):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        code = script.replace("== 4", f"== {devices}").replace("sharded.npz", f"{name}.npz")
        subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    ref = np.load(tmp_path / "single.npz")
    got = np.load(tmp_path / "sharded.npz")
    np.testing.assert_array_equal(got["images"], ref["images"])
    np.testing.assert_array_equal(got["objective"], ref["objective"])
