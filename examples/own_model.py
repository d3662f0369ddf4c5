"""A researcher's own Flax NNX module in jaxoip: its submodules are the layers, named by attribute path."""

import os

from flax import nnx

import jaxoip


class Block(nnx.Module):
    def __init__(self, channels_in: int, channels_out: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels_in, channels_out, (3, 3), padding="VALID", rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class MyNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Sequential(nnx.Conv(1, 8, (3, 3), rngs=rngs), nnx.relu)
        self.blocks = nnx.List([Block(8, 16, rngs), Block(16, 32, rngs)])
        self.classifier = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean(axis=(1, 2)))


def factory() -> jaxoip.TrainedModel:
    """What `--model examples/own_model.py:factory` calls: the module, its input shape and standardization."""
    net = MyNet(nnx.Rngs(0))  # Random weights here; restore your trained state (e.g. with Orbax) instead.
    return jaxoip.from_nnx(net, input_shape=(28, 28, 1), standardization=jaxoip.Standardization(33.32, 78.57))


if __name__ == "__main__":
    quick = bool(os.environ.get("JAXOIP_EXAMPLE_QUICK"))  # A few maps, starts and steps (the tests run it so).
    model = factory()
    print("layers:", ", ".join(jaxoip.layer_names(model.config)))  # stem.layers.0, stem, blocks.0.conv, ...
    data = jaxoip.load_mnist()
    cfg = jaxoip.OIPConfig(steps=20 if quick else 300)
    scan = jaxoip.scan_maps(model, "blocks.1", map_indices=range(4 if quick else 32), restarts=2, config=cfg, data=data)
    print(scan.table()[["map", "best_objective", "method", "dead_on_data"]].to_string(index=False))
    exemplars = jaxoip.find_exemplars(model, data, "blocks.0", k=3)
    print("top test images of blocks.0 map 0:", exemplars.image_indices[0].tolist())
    grid = jaxoip.layer_grid(model, "stem", "test:0", data=data)
    print("stem activations of test image 0:", grid.activations.shape)
