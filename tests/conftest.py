"""Shared fixtures: real MNIST when available, and one tiny trained model per test session.

The tiers: every test that uses the `mnist` fixture, directly or through another (`tiny_trained`,
`tiny_checkpoint`, a module's fixture built on them), is marked `mnist` here at collection, so that
`pytest -m "not mnist and not slow"` (the fast tier: planted models and generated images) deselects it rather
than letting it skip. A test that asks for `mnist` only inside its body (`request.getfixturevalue`) carries the
mark itself, as do a few tests that need no data but take too long for the fast tier (each says so).
"""

import jax
import pytest

from jaxoip.data import mnist as data_lib

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "mnist" in getattr(item, "fixturenames", ()):  # The closure: fixtures of fixtures included.
            item.add_marker(pytest.mark.mnist)


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST from $JAXOIP_DATA_DIR (CI points it at ../shared/data/mnist)."""
    if not data_lib.data_available():
        pytest.skip(f"no MNIST: set {data_lib.DATA_DIR_ENV} to a folder with the four IDX files")
    return data_lib.load_mnist()


@pytest.fixture(scope="session")
def tiny_trained(mnist):
    """The default CNN after two epochs on 4,000 real images (about 95% test accuracy), seconds on CPU."""
    from jaxoip.models.train import TrainConfig, train

    return train(TrainConfig(epochs=2, train_subset=4000, seed=0), data=mnist, progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_trained, tmp_path_factory):
    from jaxoip.models.checkpoint import save_model

    return save_model(tmp_path_factory.mktemp("ckpt") / "model", tiny_trained)


@pytest.fixture(scope="session")
def reference():
    """The shipped reference model (40 epochs, 99.37% test accuracy)."""
    from jaxoip.models.checkpoint import load_reference_model

    return load_reference_model()
