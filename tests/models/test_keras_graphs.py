"""Any Keras graph through Keras's own JAX backend (`jaxoip.from_keras`): residual branches, separable and
depthwise convolutions, concatenations, PReLU, keras.applications, legacy .h5 files; equal to Keras's own
outputs, searchable, and refused in one line where it cannot be used."""

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

import jaxoip
from jaxoip import cli
from jaxoip.cli import scan_all_maps
from jaxoip.data import mnist as data_lib
from jaxoip.data.mnist import Standardization
from jaxoip.errors import CheckpointError, JaxoipError, LayerError
from jaxoip.models.checkpoint import load_model

os.environ.setdefault("KERAS_BACKEND", "jax")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None, reason="needs keras (pip install -e '.[test]')"
)


def _residual(keras, seed=0, size=24):
    """A small ResNet/Xception-style graph: Rescaling, residual Add, SeparableConv2D, DepthwiseConv2D,
    ZeroPadding2D, Concatenate, PReLU, LeakyReLU, LayerNormalization, batch norm with non-trivial statistics."""
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    y = layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    y = layers.BatchNormalization(name="bn")(y)
    x = layers.Add(name="add")([x, y])
    z = layers.ZeroPadding2D(1, name="pad")(x)
    z = layers.DepthwiseConv2D(3, name="dw")(z)
    z = layers.PReLU(name="prelu")(z)
    x = layers.Concatenate(name="cat")([x, z])
    x = layers.Conv2D(12, 3, strides=2, name="down")(x)
    x = layers.LeakyReLU(negative_slope=0.1, name="leaky")(x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")  # Inference statistics that are not the identity.
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(0, 0.5, 8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 8).astype("float32"))
    return model


def _keras_outputs(keras, model, names, pixels):
    view = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    with jax.numpy_rank_promotion("allow"):
        out = view(pixels, training=False)
    return [np.asarray(a) for a in (out if isinstance(out, (list, tuple)) else [out])]


def _pixels(shape, n=3, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype(np.float32)


def test_a_residual_graph_equals_keras_in_every_layer():
    import keras

    model = _residual(keras)
    trained = jaxoip.from_keras(model)
    names = [s.name for s in trained.config.layers]
    assert names[0] == "stem" and {"add", "sep", "dw", "prelu", "cat", "ln", "logits"} <= set(names)
    assert trained.standardization == Standardization(mean=127.5, std=127.5)  # The Rescaling layer.
    pixels = _pixels((24, 24, 3))
    for name, want in zip(names, _keras_outputs(keras, model, names, pixels)):
        got = np.asarray(trained.layer_output(pixels, name))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
    kinds = {s.name: s.kind for s in trained.config.layers}
    assert kinds["stem"] == kinds["sep"] == kinds["dw"] == "conv" and kinds["add"] == "maps"
    assert kinds["logits"] == "dense" and kinds["gap"] == "units"
    assert trained.model(trained.standardization(pixels)).shape == (3, 5)


def test_the_user_model_is_not_changed_and_weights_are_arguments():
    import keras

    model = _residual(keras)
    before = [np.array(v.numpy()) for v in model.weights]
    trained = jaxoip.from_keras(model)
    from flax import nnx

    _, params = nnx.split(trained.model)
    assert sum(np.size(a) for a in jax_leaves(params)) == sum(a.size for a in before)
    for v, a in zip(model.weights, before):
        np.testing.assert_array_equal(np.asarray(v.numpy()), a)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.mnist  # Needs no MNIST: in that tier for its MobileNetV2 (the fast tier stays under 2 minutes).
def test_mobilenet_v2_from_keras_applications():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    trained = jaxoip.from_keras(model, Standardization.parse("-1..1"))
    names = [s.name for s in trained.config.layers]
    assert len(names) > 100 and "block_16_project" in names and names[-1] == "predictions"
    pixels = _pixels((96, 96, 3), n=2)
    picked = ["Conv1", "block_2_add", "block_16_project", "out_relu", "predictions"]
    inputs = pixels / 127.5 - 1  # What the model takes: -1..1.
    for name, want in zip(picked, _keras_outputs(keras, model, picked, inputs)):
        np.testing.assert_allclose(np.asarray(trained.layer_output(pixels, name)), want, rtol=1e-4, atol=1e-4)


def test_legacy_h5_with_residual_blocks_loads_through_keras(tmp_path):
    import keras

    model = _residual(keras, seed=3)
    model.save(tmp_path / "resnet.h5")  # The legacy HDF5 format.
    trained = load_model(tmp_path / "resnet.h5")
    assert trained.train_config["source"].startswith("keras:")
    pixels = _pixels((24, 24, 3))
    want = _keras_outputs(keras, model, ["add", "logits"], pixels)
    for name, w in zip(["add", "logits"], want):
        np.testing.assert_allclose(np.asarray(trained.layer_output(pixels, name)), w, rtol=1e-4, atol=1e-4)


def test_search_through_keras_raises_its_target():
    import keras

    trained = jaxoip.from_keras(_residual(keras))
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(4, 24, 24, 3)).astype(np.float32)
    start = jaxoip.search_oips(trained.model, "add", [0, 1, 2, 3], x0, jaxoip.OIPConfig(steps=1))
    res = jaxoip.search_oips(trained.model, "add", [0, 1, 2, 3], x0, jaxoip.OIPConfig(steps=40))
    assert np.all(res.objective > start.objective)
    # The objective reported is Keras's own value of the map's mean on the final image.
    pixels = trained.standardization.to_pixels(res.images)
    want = _keras_outputs(keras, _residual(keras), ["add"], pixels)[0]
    np.testing.assert_allclose(res.objective, want[np.arange(4), ..., [0, 1, 2, 3]].mean(axis=(1, 2)), rtol=1e-4)


def test_command_scans_an_add_layer_of_a_keras_file_with_a_site(tmp_path, monkeypatch):
    import keras

    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
    model = _residual(keras)
    model.save(tmp_path / "resnet.keras")
    out = tmp_path / "scan"
    argv = ["--model", str(tmp_path / "resnet.keras"), "--layer", "add", "--maps", "0-2", "--steps", "8"]
    argv += ["--restarts", "2", "--precursor-starts", "4", "--screen", "2", "--no-progress", "--out", str(out)]
    assert cli.run(scan_all_maps.main, argv) == 0
    for name in ("maps.csv", "oips.npz", "index.html", "gallery.png", "summary.json"):
        assert (out / name).is_file(), name
    oips = np.load(out / "oips.npz")
    best = oips["best_pixels"] if "best_pixels" in oips else model_pixels(oips)
    want = _keras_outputs(keras, model, ["add"], best.astype(np.float32))[0]
    maps = oips["map_indices"]
    np.testing.assert_allclose(
        oips["best_objective"], want[np.arange(len(maps)), ..., maps].mean(axis=(1, 2)), rtol=1e-3, atol=1e-4
    )
    assert json.loads((out / "summary.json").read_text())["layer"] == "add"


def model_pixels(oips):
    return Standardization(127.5, 127.5).to_pixels(oips["best_images"])


def test_unknown_layer_suggests_near_names():
    import keras

    trained = jaxoip.from_keras(_residual(keras))
    assert len(trained.config.layers) > 12  # Too many to list: near names are suggested instead.
    with pytest.raises(LayerError, match="did you mean .*add") as e:
        jaxoip.search_oips(trained.model, "ad", [0], np.zeros((1, 24, 24, 3), np.float32))
    assert "\n" not in str(e.value)


def test_refusals_are_one_line(monkeypatch):
    import keras
    from keras import layers

    plain = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(2)])
    with pytest.raises(JaxoipError, match="--input-scale"):
        jaxoip.from_keras(plain)
    assert jaxoip.from_keras(plain, Standardization.parse("imagenet")).standardization.mean == (123.675, 116.28, 103.53)
    unbuilt = keras.Sequential([layers.Conv2D(4, 3)])
    with pytest.raises(CheckpointError, match="not built"):
        jaxoip.from_keras(unbuilt)
    with pytest.raises(CheckpointError, match="a keras.Model"):
        jaxoip.from_keras(object())
    monkeypatch.setitem(sys.modules, "keras", None)  # As if Keras were not installed.
    with pytest.raises(CheckpointError, match=r"pip install 'jaxoip\[keras\]'"):
        jaxoip.from_keras(plain)


@pytest.mark.parametrize(
    ("text", "mean", "std"),
    [("0..1", 0.0, 255.0), ("-1..1", 127.5, 127.5), ("0.1307,0.3081", 0.1307 * 255, 0.3081 * 255)],
)
def test_input_scales(text, mean, std):
    s = Standardization.parse(text)
    assert s.mean == pytest.approx(mean) and s.std == pytest.approx(std)


@pytest.mark.parametrize("text", ["0..2", "1,0", "a,b", "1/2/3,1/2", "0.5"])
def test_bad_input_scales_are_refused(text):
    with pytest.raises(JaxoipError, match="input scale"):
        Standardization.parse(text)


def test_a_layer_jax_cannot_trace_is_refused_naming_it():
    import keras
    from keras import layers

    class HostSide(layers.Layer):
        def call(self, x):
            return x * float(np.asarray(x).mean())  # Needs concrete values: not traceable.

        def compute_output_spec(self, x):  # Keras builds the graph from this, without tracing `call`.
            return keras.KerasTensor(x.shape, x.dtype)

    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(2, 3), HostSide(name="host"), layers.Flatten()])
    with pytest.raises(CheckpointError, match="cannot run as a differentiable JAX function") as e:
        jaxoip.from_keras(model, Standardization.parse("0..1"))
    assert "\n" not in str(e.value)
