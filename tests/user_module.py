"""A researcher's own NNX module, written as a user would (tests/test_nnx_adapter.py loads it as file.py:factory)."""

from flax import nnx

import jaxoip


class Block(nnx.Module):
    def __init__(self, cin, cout, rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="VALID", rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class MyNet(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Sequential(nnx.Conv(1, 8, (3, 3), rngs=rngs), nnx.relu)
        self.blocks = nnx.List([Block(8, 12, rngs), Block(12, 16, rngs)])
        self.classifier = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean(axis=(1, 2)))


def factory():
    return jaxoip.from_nnx(MyNet(nnx.Rngs(0)), (28, 28, 1), jaxoip.Standardization(33.3, 78.6))
