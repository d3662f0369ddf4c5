"""Activations of real images: a layer's output and the class probabilities, for pixels or a whole split.

The analyses built on them live in their own modules:

- `jaxoip.data.inputs`: input images from specs ('test:19'), .npy files or pixel arrays.
- `jaxoip.analysis.grids`: all maps of a layer for one image, laid out as in the study.
- `jaxoip.analysis.grid_comparison`: two groups of images (e.g. 4s against 9s) on one color scale, per-map statistics.
- `jaxoip.analysis.predictions`: class probabilities of a split, misclassified and least-sure images, confusions.
- `jaxoip.analysis.exemplars`: per map, the test images that activate it most, with the receptive-field patches.

The command `python -m jaxoip activations` (`jaxoip.cli.activations`) draws these figures.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Shaped

from jaxoip._check import check_finite_images
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.models.cnn import TrainedModel, batched_layer_map, check_trained, get_layer, layer_specs
from jaxoip.numerics import DEFAULT_PRECISION, Precision
from jaxoip.shapes import LayerActivations


def image_activations(
    trained: TrainedModel,
    pixels: Float[ArrayLike, "n H W ch"],
    layer_name: str,
    precision: Precision = DEFAULT_PRECISION,
) -> LayerActivations:
    """Activations of `layer_name` for images in pixel units, in one jitted batched pass."""
    get_layer(check_trained(trained).config, layer_name)
    x = trained.standardization(jnp.asarray(check_finite_images("the images", pixels), jnp.float32))
    return np.asarray(batched_layer_map(trained.model, x, layer_name, precision=precision))


def dataset_activations(
    trained: TrainedModel,
    data: MNIST,
    layer_name: str,
    split: str = "test",
    fn: Callable[[Float[Array, " b *layer"]], PyTree[Shaped[Array, "b ..."]]] | None = None,
    batch_size: int = 500,
    precision: Precision = DEFAULT_PRECISION,
) -> LayerActivations | PyTree[Shaped[np.ndarray, "n ..."]]:
    """`fn(activations)` of `layer_name` for a whole split, from one jitted `lax.map` over batches.

    Without `fn` the raw activations come back: (10000, 3, 3, 128) floats for Conv2D_3 of the test set
    (46 MB) but 865 MB for Conv2D_1; reduce large layers with `fn` (batch -> per-image results).
    """
    get_layer(check_trained(trained).config, layer_name)
    images, _ = check_data(data).split(split)
    x = trained.standardization(check_finite_images(f"the {split} images", images))
    return batched_layer_map(trained.model, x, layer_name, fn, batch_size, precision=precision)


def to_probabilities(
    trained: TrainedModel,
) -> Callable[[Float[Array, "n classes"]], Float[Array, "n classes"]] | None:
    """What turns the output layer into class probabilities: None for the study's softmax output, else softmax."""
    if layer_specs(trained.config)[-1].activation == "softmax":
        return None
    return jax.nn.softmax


def class_probabilities(
    trained: TrainedModel, pixels: Float[ArrayLike, "n H W ch"], precision: Precision = DEFAULT_PRECISION
) -> Float[np.ndarray, "n classes"]:
    """Class probabilities for images in pixel units."""
    check_trained(trained)
    last = layer_specs(trained.config)[-1].name
    x = trained.standardization(jnp.asarray(check_finite_images("the images", pixels), jnp.float32))
    return np.asarray(batched_layer_map(trained.model, x, last, to_probabilities(trained), precision=precision))
