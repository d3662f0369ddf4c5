"""The selective objective (`--selective`) and the MACO parameterization (`--param maco`)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxoip import cli
from jaxoip.cli import scan_all_maps
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import ModelConfig, init_model
from jaxoip.oip import param, targets
from jaxoip.oip.config import ObjectiveConfig
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.objectives import from_config
from jaxoip.oip.plan import plan_scan
from jaxoip.oip.scan import scan_maps
from jaxoip.oip.search import OIPConfig, search_oips

SMALL = ModelConfig(conv=((5, 3, "relu"), (4, 3, "relu")), pool=(2,), dense=((10, "softmax"),))
ARGS = ["--steps", "12", "--restarts", "2", "--precursor-starts", "8", "--screen", "2", "--no-progress"]


def _starts(n, recipe="study", seed=0):
    return np.asarray(initial_images(start_keys(seed, np.arange(n), 1).reshape(-1), [recipe]))


def _conv1_numpy(model, x):
    """Conv2D_1 of the small model in NumPy: valid cross-correlation, bias, ReLU (not jaxoip's layers)."""
    state = nnx.state(model, nnx.Param)
    k = np.asarray(state["Conv2D_1"]["kernel"][...], np.float64)  # (3, 3, 1, C)
    b = np.asarray(state["Conv2D_1"]["bias"][...], np.float64)
    x = np.asarray(x, np.float64)[..., 0]
    h = x.shape[1] - 2
    out = np.zeros((x.shape[0], h, h, k.shape[-1]))
    for a in range(3):
        for c in range(3):
            out += x[:, a : a + h, c : c + h, None] * k[a, c, 0][None, None, None, :]
    return np.maximum(out + b, 0)


def _selective_numpy(acts, maps, data_max, lam):
    """Target's mean / its data max (1 if not positive), minus lam times the mean ratio of the live others."""
    means = acts.mean(axis=(1, 2))
    out = []
    for v, m in zip(means, maps):
        scale = np.where(data_max > 0, data_max, 1.0)
        others = [j for j in range(len(v)) if j != m and data_max[j] > 0]
        out.append(v[m] / scale[m] - lam * np.mean([v[j] / data_max[j] for j in others]))
    return np.array(out)


def test_selective_objective_matches_an_independent_computation():
    model = init_model(SMALL, 3)
    x = _starts(6)
    maps = np.array([0, 1, 2, 3, 4, 2], np.int32)
    data_max = np.array([2.0, 0.5, 0.0, 1.5, 3.0], np.float32)  # map 2 dead on data
    graphdef, params = nnx.split(model)
    objective = from_config(model.layer("Conv2D_1"), None, ObjectiveConfig(selective=0.7))
    fn = targets.make_selective_objectives(graphdef, objective)
    obj, selective, _, asleep = jax.jit(fn)(params, x, maps, data_max)
    acts = _conv1_numpy(model, x)
    np.testing.assert_allclose(obj, acts.mean(axis=(1, 2))[np.arange(6), maps], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(selective, _selective_numpy(acts, maps, data_max, 0.7), rtol=1e-5, atol=1e-6)
    assert not np.asarray(asleep).any()


def test_selective_search_trades_activation_for_selectivity():
    """From the same starts, the selective search ends more selective than the plain one; the recorded
    objective is still the target's activation (checked independently)."""
    model = init_model(SMALL, 3)
    x0, maps = _starts(8, "fine"), np.tile(np.arange(4, dtype=np.int32), 2)
    data_max = np.array([1.0, 2.0, 0.5, 1.5, 1.0], np.float32)
    plain = search_oips(model, "Conv2D_1", maps, x0, OIPConfig(steps=40, epsilon=0.05))
    selective = ObjectiveConfig(selective=2.0)
    sel = search_oips(
        model, "Conv2D_1", maps, x0, OIPConfig(steps=40, epsilon=0.05), data_max=data_max, options=selective
    )
    acts = _conv1_numpy(model, sel.images)
    np.testing.assert_allclose(sel.objective, acts.mean(axis=(1, 2))[np.arange(8), maps], rtol=1e-4, atol=1e-5)
    s_sel = _selective_numpy(acts, maps, data_max, 2.0)
    s_plain = _selective_numpy(_conv1_numpy(model, plain.images), maps, data_max, 2.0)
    assert np.all(s_sel > s_plain - 1e-6) and s_sel.mean() > s_plain.mean() + 0.05, (s_sel, s_plain)


def test_selective_zero_is_the_plain_search_bit_for_bit():
    model = init_model(SMALL, 3)
    x0, maps = _starts(4), np.arange(4, dtype=np.int32)
    plain = search_oips(model, "Conv2D_2", maps, x0, OIPConfig(steps=15), options=ObjectiveConfig(wake=True))
    zero = search_oips(
        model,
        "Conv2D_2",
        maps,
        x0,
        OIPConfig(steps=15),
        data_max=np.ones(4, np.float32),
        options=ObjectiveConfig(wake=True, selective=0.0),
    )
    for k in ("images", "objective", "traces", "snapshots"):
        np.testing.assert_array_equal(getattr(zero, k), getattr(plain, k))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(selective=-1.0), "selective must be at least 0"),
        (dict(selective=float("nan")), "selective must be a finite number"),
        (dict(selective=1.0, weighted=(((0, 1.0), (1, -1.0)),)), "does not apply to weighted targets"),
    ],
)
def test_selective_config_errors(kwargs, message):
    weighted = kwargs.pop("weighted", ())
    with pytest.raises(JaxoipError, match=message) as e:
        search_oips(
            init_model(SMALL, 3), "Conv2D_1", [0], _starts(1), options=ObjectiveConfig(**kwargs), weighted=weighted
        )
    assert len(str(e.value).splitlines()) == 1


def test_search_refuses_missing_or_malformed_data():
    model = init_model(SMALL, 3)
    x0, maps = _starts(2), np.arange(2, dtype=np.int32)
    with pytest.raises(JaxoipError, match="needs every map's largest activation"):
        search_oips(model, "Conv2D_1", maps, x0, OIPConfig(steps=2), options=ObjectiveConfig(selective=1.0))
    with pytest.raises(JaxoipError, match="must hold 5 finite values"):
        selective = ObjectiveConfig(selective=1.0)
        search_oips(model, "Conv2D_1", maps, x0, OIPConfig(steps=2), data_max=np.ones(3), options=selective)
    with pytest.raises(JaxoipError, match="maco parameterization needs"):
        search_oips(model, "Conv2D_1", maps, x0, OIPConfig(steps=2, param="maco"))
    with pytest.raises(JaxoipError, match="maco magnitude must be 28x15"):
        search_oips(model, "Conv2D_1", maps, x0, OIPConfig(steps=2, param="maco"), magnitude=np.ones((28, 28)))


def test_maco_magnitude_and_round_trip():
    rng = np.random.default_rng(0)
    mag = param.maco_magnitude(rng.normal(size=(30, 28, 28, 1)))
    assert mag.shape == (28, 15) and mag[0, 0] == mag[14, 0] == mag[0, 14] == mag[14, 14] == 0
    for _ in range(3):
        phase = rng.uniform(-4, 4, size=(28, 15)).astype(np.float32)
        img = np.asarray(param.to_image("maco", phase, (28, 28), magnitude=mag))
        # The fixed magnitude is that of a zero-mean, unit-variance image, whatever the phase.
        assert abs(img.mean()) < 1e-5 and abs(img.std() - 1) < 1e-5
        np.testing.assert_allclose(np.abs(np.fft.rfft2(img[..., 0], norm="ortho")), mag, atol=1e-5)
        again = param.to_image("maco", param.to_params("maco", img), (28, 28), magnitude=mag)
        np.testing.assert_allclose(again, img, atol=1e-5)


def test_maco_search_keeps_the_magnitude(mnist):
    """Every snapshot of a MACO search (standardized) has exactly the fixed amplitude spectrum, which is
    the training images' mean one; the search ascends."""
    model = init_model(SMALL, 3)
    mag = param.maco_magnitude(mnist.train_images[:2000])
    x0, maps = _starts(4, "coarse7"), np.arange(4, dtype=np.int32)
    cfg = OIPConfig(steps=30, epsilon=0.05, param="maco", snapshot_steps=(0, 5, 10, 20))
    res = search_oips(model, "Conv2D_2", maps, x0, cfg, magnitude=mag)
    assert res.snapshots.shape[1] == 5
    spectra = np.abs(np.fft.rfft2(res.snapshots[..., 0], norm="ortho"))
    np.testing.assert_allclose(spectra, np.broadcast_to(mag, spectra.shape), atol=2e-5)
    np.testing.assert_allclose(res.images.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(res.images.std(axis=(1, 2, 3)), 1, atol=1e-4)
    # Low frequencies carry most of a digit's energy, so they do in every MACO image.
    assert mag[:3, :3].sum() > mag[10:19, 10:].sum()
    assert (res.traces[:, -1] >= res.traces[:, 0]).all() and (res.traces[:, -1] > res.traces[:, 0]).any()


@pytest.mark.slow
def test_maco_and_selective_from_the_command_line(tiny_checkpoint, tiny_trained, mnist, tmp_path):
    """`--param maco --selective 1` runs, is recorded, and equals the API's scan from the same seed."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_checkpoint), "--maps", "0,5", "--param", "maco", "--selective", "1", "--seed", "3"]
    assert cli.run(scan_all_maps.main, [*argv, "--out", str(out), *ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["oip_config"]["param"] == "maco" and summary["objective"]["selective"] == 1.0
    assert summary["options"]["param"] == "maco" and summary["options"]["selective"] == 1.0
    images = np.load(out / "oips.npz")["best_images"]
    spectra = np.abs(np.fft.rfft2(images[..., 0], norm="ortho"))
    mag = param.maco_magnitude(tiny_trained.standardization(mnist.train_images))
    np.testing.assert_allclose(spectra, np.broadcast_to(mag, spectra.shape), atol=2e-5)
    cfg = OIPConfig(steps=12, param="maco")
    res = scan_maps(
        tiny_trained,
        "Conv2D_3",
        [0, 5],
        restarts=2,
        config=cfg,
        precursor_starts=8,
        screen=2,
        seed=3,
        data=mnist,
        options=ObjectiveConfig(selective=1.0, wake=True),
    )
    np.testing.assert_array_equal(res.best_images, images)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--selective", "-1"], "selective must be at least 0"),
        (["--selective", "inf"], "selective must be a finite number"),
        (["--selective", "1", "--layer", "Dense_2", "--target", "4-9"], "does not apply to weighted targets"),
    ],
)
def test_bad_arguments_one_line(tiny_checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = cli.run(scan_all_maps.main, ["--model", str(tiny_checkpoint), "--out", str(out), *ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [(["--param", "maco"], "--param maco needs the training images"), (["--selective", "0.5"], "--selective needs")],
)
def test_refused_without_mnist(tmp_path, monkeypatch, capsys, extra, message):
    from jaxoip.data import mnist as data_lib
    from jaxoip.errors import DataError
    from jaxoip.models.checkpoint import load_reference_model

    def no_tfds():
        raise DataError("no MNIST data")

    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data_lib, "_load_tfds", no_tfds)
    rc = cli.run(scan_all_maps.main, ["--maps", "0", "--out", str(tmp_path / "out"), *ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
    cfg = OIPConfig(steps=2, param="maco") if "maco" in message else OIPConfig(steps=2)
    options = ObjectiveConfig(selective=0.5 if "selective" in message else 0.0)
    with pytest.raises(JaxoipError, match=message):
        plan_scan(load_reference_model(), "Conv2D_1", config=cfg, options=options).check_data(None)
