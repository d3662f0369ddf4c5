"""Keras 3 (JAX backend) CNNs of four architectures load through `load_model`, and every layer's output equals
Keras's to 1e-4: the study's CNN through the functional API, a colour 32x32x3 network with `same` padding,
batch normalization and global average pooling, a strided one with average pooling and separate activation
layers, and one with overlapping `same` max pooling on a non-square two-channel input."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from jaxoip.models.checkpoint import load_model
from jaxoip.models.cnn import layer_names

os.environ.setdefault("KERAS_BACKEND", "jax")  # Before keras is imported: its default backend is TensorFlow.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None, reason="keras is not installed (pip install -e '.[test]')"
)


def _study_functional(keras, layers):
    inputs = keras.Input((28, 28, 1))
    x = layers.Rescaling(1 / 80.0, offset=-0.4)(inputs)
    for i, filters in enumerate((32, 64, 128)):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"Conv2D_{i + 1}")(x)
        if i < 2:
            x = layers.MaxPooling2D(2, name=f"Max_Pool_{i + 1}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


def _colour_bn_gap(keras, layers):
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Normalization(mean=[0.49, 0.48, 0.45], variance=[0.06, 0.06, 0.07])(x)
    x = layers.Conv2D(16, 3, padding="same", name="c1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="r1")(x)
    x = layers.Conv2D(24, 3, padding="same", strides=2, activation="relu", name="c2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.MaxPooling2D(2, name="p2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax", name="logits")(x))


def _strided_avg(keras, layers):
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Normalization(mean=33.3, variance=78.5**2),
            layers.Conv2D(12, 5, strides=2, name="c1"),
            layers.Activation("tanh", name="t1"),
            layers.AveragePooling2D(2, name="a1"),
            layers.Conv2D(20, 3, padding="same", activation="sigmoid", name="c2"),
            layers.Flatten(name="f"),
            layers.Dropout(0.2),
            layers.Dense(32, activation="relu", name="h"),
            layers.Dense(10, name="out"),
        ]
    )


def _overlapping_pools(keras, layers):
    return keras.Sequential(
        [
            keras.Input((20, 24, 2)),
            layers.Rescaling(1 / 127.5, offset=-1.0),
            layers.Conv2D(8, 3, activation="relu", padding="same", name="c1"),
            layers.MaxPooling2D(3, strides=2, padding="same", name="p1"),
            layers.Conv2D(8, 2, activation="relu", name="c2"),
            layers.AveragePooling2D(3, strides=1, padding="same", name="p2"),
            layers.Flatten(),
            layers.Dense(5, activation="softmax", name="out"),
        ]
    )


ARCHITECTURES = {
    "study_functional": _study_functional,
    "colour_bn_gap": _colour_bn_gap,
    "strided_avg": _strided_avg,
    "overlapping_pools": _overlapping_pools,
}


def _randomize(model, seed):
    """Random weights everywhere (biases, BN statistics too), so that no misplaced array goes unnoticed."""
    rng = np.random.default_rng(seed)
    weights = []
    for layer in model.layers:
        for v in layer.weights:
            w = np.asarray(v)
            if "variance" in v.path:
                w = rng.uniform(0.5, 2.0, w.shape)
            elif w.ndim > 1:
                w = 1.5 * w
            else:
                w = rng.normal(0, 0.2, w.shape)
            weights.append(w.astype(np.float32))
    model.set_weights(weights)


@pytest.mark.parametrize(
    "name, suffix", [*((name, ".keras") for name in sorted(ARCHITECTURES)), ("colour_bn_gap", ".h5")]
)
def test_every_layer_equals_keras(tmp_path, name, suffix):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = ARCHITECTURES[name](keras, layers)
    _randomize(model, 1)
    model.save(tmp_path / f"m{suffix}")
    trained = load_model(tmp_path / f"m{suffix}")  # Rescaling/Normalization: no data needed.
    shape = model.inputs[0].shape[1:]
    pixels = np.random.default_rng(2).uniform(0, 255, (6, *shape)).astype(np.float32)
    checked, spread = 0, 0.0
    with jax.default_matmul_precision("highest"), jax.numpy_rank_promotion("allow"):
        for layer in model.layers:
            if layer.name not in layer_names(trained.config):
                continue
            expected = np.asarray(keras.Model(model.inputs[0], layer.output)(pixels))
            got = np.asarray(trained.layer_output(pixels, layer.name))
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=f"{name}: layer {layer.name}")
            checked += 1
            spread = max(spread, float(np.ptp(expected, axis=0).max()))
    assert checked == len(layer_names(trained.config))
    assert spread > 0.1  # Values that tell the images apart, far above the tolerance.


def test_a_model_without_preprocessing_is_standardized_from_the_data_given(tmp_path):
    import keras
    from keras import layers

    from jaxoip.data.images import load_images
    from jaxoip.data.mnist import Standardization

    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)  # noqa: E731
    np.savez(
        tmp_path / "set.npz", x_train=images(20), y_train=np.arange(20) % 3, x_test=images(6), y_test=np.arange(6) % 3
    )
    model = keras.Sequential([keras.Input((12, 12, 3)), layers.Conv2D(4, 3), layers.GlobalAveragePooling2D()])
    model.save(tmp_path / "plain.keras")
    trained = load_model(tmp_path / "plain.keras", data=tmp_path / "set.npz")
    assert trained.standardization == Standardization.fit(load_images(tmp_path / "set.npz").train_images)
    assert trained.train_config["standardization_data"].endswith("set.npz")


@pytest.mark.mnist  # Needs no MNIST: in that tier for its whole command (the fast tier stays under 2 minutes).
def test_scan_all_maps_takes_the_colour_keras_model(tmp_path):
    """Done-when of issue 15: the command on a colour Keras file writes a gallery of colour OIPs."""
    import keras
    from keras import layers
    from PIL import Image

    from jaxoip import cli
    from jaxoip.cli import scan_all_maps

    keras.utils.set_random_seed(0)
    model = _colour_bn_gap(keras, layers)
    _randomize(model, 1)
    model.save(tmp_path / "colour.keras")
    out = tmp_path / "scan"
    argv = ["--model", str(tmp_path / "colour.keras"), "--layer", "c2", "--maps", "0-3", "--steps", "8"]
    argv += ["--restarts", "2", "--precursor-starts", "4", "--screen", "2", "--no-progress", "--out", str(out)]
    assert cli.run(scan_all_maps.main, argv) == 0
    oips = np.load(out / "oips.npz")
    assert oips["best_images"].shape == (4, 32, 32, 3) and np.isfinite(oips["best_images"]).all()
    gallery = np.asarray(Image.open(out / "gallery.png").convert("RGB"), float)
    assert np.abs(gallery[..., 0] - gallery[..., 1]).max() > 10  # Colour, not grey.
