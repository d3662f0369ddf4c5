"""A Keras 3 model with residual branches in jaxoip, run by Keras itself on its JAX backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # Before Keras is first imported.

import keras
from keras import layers

import jaxoip


def residual_net(size: int = 64) -> keras.Model:
    """A small ResNet-style classifier: separable and depthwise convolutions, residual additions."""
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # Its input scale: jaxoip reads it as the standardization.
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(x)
    for i in range(2):
        y = layers.SeparableConv2D(16, 3, padding="same", activation="relu", name=f"block{i}_sep")(x)
        y = layers.DepthwiseConv2D(3, padding="same", name=f"block{i}_dw")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn")(y)
        x = layers.Add(name=f"block{i}_add")([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x))


def factory() -> jaxoip.TrainedModel:
    """What `--model examples/keras_model.py:factory` calls (a saved model: `--model net.keras` instead)."""
    keras.utils.set_random_seed(0)  # Random weights here; load yours with keras.saving.load_model(...).
    return jaxoip.from_keras(residual_net())


if __name__ == "__main__":
    quick = bool(os.environ.get("JAXOIP_EXAMPLE_QUICK"))  # A few maps, starts and steps (the tests run it so).
    model = factory()
    print("layers:", ", ".join(jaxoip.layer_names(model.config)))
    cfg = jaxoip.OIPConfig(steps=20 if quick else 200)
    scan = jaxoip.scan_maps(model, "block1_add", map_indices=range(4 if quick else 16), restarts=2, config=cfg)
    print(scan.table()[["map", "best_objective", "method"]].to_string(index=False))
