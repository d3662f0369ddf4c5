"""Layer grids: all maps (or all nodes of a dense layer) of one layer for an image, laid out as in the study.

`layer_grid` is the public entry; `standardize_maps` is the study's display scaling and `activation_grid`
the layout. Grids of several images come from one compiled call (`image_grids`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import ArrayLike, Float

from jaxoip.analysis.activations import to_probabilities
from jaxoip.data.inputs import ImageSource, InputImage, get_image
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import TrainedModel, check_finite_outputs, check_trained, get_layer
from jaxoip.numerics import DEFAULT_PRECISION, Precision, fetch, precision_scope


def standardize_maps(acts: Float[ArrayLike, "*layer"]) -> Float[np.ndarray, "*layer"]:
    """The study's display scaling: (map - mean) / std * 64 + 128, clipped to 0..255.

    `acts` is one image's layer output: (H, W, C) maps are scaled one by one; the nodes (N,) of a flatten
    or dense layer are scaled together (a single node has no spread). A constant map becomes 0, as in the study.
    """
    acts = np.asarray(acts, np.float64)
    axes = (0, 1) if acts.ndim == 3 else tuple(range(acts.ndim))
    centered = acts - acts.mean(axis=axes, keepdims=True)
    std = centered.std(axis=axes, keepdims=True)
    scaled = np.where(std > 0, centered / np.where(std > 0, std, 1.0) * 64.0 + 128.0, centered)
    return np.clip(scaled, 0.0, 255.0).astype(np.float32)


def activation_grid(acts: Float[ArrayLike, "*layer"], per_row: int = 8) -> Float[np.ndarray, "grid_h grid_w"]:
    """One image's maps (H, W, C) or nodes (N,) as a 2-D grid, top-down in rows of `per_row` cells.

    Map (or node) m fills cell (m // per_row, m % per_row), i.e. rows [r*H, (r+1)*H) and columns
    [c*W, (c+1)*W); a node of a dense layer is a 1x1 cell. Cells after the last map are NaN.
    """
    if per_row < 1:
        raise JaxoipError(f"maps per row must be at least 1; got {per_row}")
    acts = np.asarray(acts, np.float32)
    if acts.ndim == 1:
        acts = acts[None, None, :]
    if acts.ndim != 3:
        raise JaxoipError(f"expected one image's maps (H, W, C) or nodes (N,); got shape {acts.shape}")
    h, w, c = acts.shape
    rows = -(-c // per_row)
    cells = np.full((rows * per_row, h, w), np.nan, np.float32)
    cells[:c] = np.moveaxis(acts, -1, 0)
    return cells.reshape(rows, per_row, h, w).transpose(0, 2, 1, 3).reshape(rows * h, per_row * w)


def _cell_shape(acts: np.ndarray) -> tuple[int, int]:
    return (1, 1) if acts.ndim == 1 else (int(acts.shape[0]), int(acts.shape[1]))


@dataclasses.dataclass(frozen=True)
class LayerGrid:
    """All maps (or nodes) of one layer for one image, as the grid that is drawn."""

    layer_name: str
    image: InputImage
    activations: Float[np.ndarray, "*layer"]  # the layer's raw output for the image
    grid: Float[np.ndarray, "grid_h grid_w"]  # displayed values (standardized if asked); NaN in empty cells
    cell_shape: tuple[int, int]
    per_row: int
    standardized: bool
    probabilities: Float[np.ndarray, " classes"]  # the model's output for the image

    @property
    def n_maps(self) -> int:
        return int(self.activations.shape[-1])

    def cell(self, map_index: int) -> Float[np.ndarray, "h w"]:
        """The grid cell of map (or node) `map_index`."""
        r, c = divmod(map_index, self.per_row)
        h, w = self.cell_shape
        return self.grid[r * h : (r + 1) * h, c * w : (c + 1) * w]


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _layer_and_output(
    graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array, layer_name: str, softmax: bool, precision: Precision
):
    """A few standardized images' activations at `layer_name` and class probabilities, in one compiled call.

    Compiled once per architecture, layer and batch size, so further grids of the same layer are cheap.
    """
    with precision_scope(precision):
        model = nnx.merge(graphdef, params)
        out = model(x)
        return model(x, until=layer_name), jax.nn.softmax(out) if softmax else out


def image_grids(
    trained: TrainedModel,
    layer_name: str,
    images: list[InputImage],
    per_row: int,
    standardize: bool,
    precision: Precision = DEFAULT_PRECISION,
) -> list[LayerGrid]:
    """The `LayerGrid` of each image, from one compiled pass over all of them."""
    graphdef, params = trained.split()
    x = trained.standardization(jnp.asarray(np.stack([i.pixels for i in images]), jnp.float32))
    softmax = to_probabilities(trained) is not None
    acts, probs = _layer_and_output(graphdef, params, x, layer_name, softmax, precision)
    acts, probs = fetch((acts, probs))  # Waited for in polls: a Ctrl-C lands while a large model runs.
    check_finite_outputs(trained.model, (acts, probs), layer_name)
    out = []
    for img, a, p in zip(images, acts, probs):
        shown = standardize_maps(a) if standardize else a
        out.append(
            LayerGrid(layer_name, img, a, activation_grid(shown, per_row), _cell_shape(a), per_row, standardize, p)
        )
    return out


def layer_grid(
    trained: TrainedModel,
    layer_name: str,
    image: ImageSource,
    data: MNIST | None = None,
    per_row: int = 8,
    standardize: bool = False,
    precision: Precision = DEFAULT_PRECISION,
) -> LayerGrid:
    """The activations of every map of `layer_name` (conv, pool, Flatten or dense) for one image, as a grid.

    `image`: 'test:19', 'train:7', a .npy file or pixels (0-255). `standardize`: the study's per-map
    scaling (`standardize_maps`) for display; `activations` stay raw.
    """
    get_layer(check_trained(trained).config, layer_name)
    if per_row < 1:
        raise JaxoipError(f"maps per row must be at least 1; got {per_row}")
    img = get_image(image, check_data(data, optional=True), trained.config.input_shape)
    return image_grids(trained, layer_name, [img], per_row, standardize, precision)[0]
