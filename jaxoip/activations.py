"""Activation analysis: what real images make the maps and nodes of a layer react.

- Layer grids: all maps of a layer (or all nodes of a dense layer) for one image, laid out as in the study.
- Comparisons: images of two groups (e.g. three 4s against three 9s) on one color scale, with per-map statistics.
- Predictions: class probabilities, the misclassified and least-sure test images, the confusion matrix.
- Dataset exemplars: for every map of a conv or pool layer, the test images that activate it most, and
  the input patch (receptive field) that the map's most active node sees.

The command `python -m jaxoip activations` (`jaxoip.cli.activations`) draws these figures.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from jaxoip.data import MNIST, load_mnist
from jaxoip.errors import DataError, JaxoipError
from jaxoip.model import TrainedModel, batched_layer_map, get_layer, layer_shapes, layer_specs, receptive_field

# --- Images ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputImage:
    """One input image in pixel units (0-255), shape (28, 28, 1), with where it came from."""

    pixels: np.ndarray
    name: str  # "test:19", "train:7", a file name, or "array"
    label: int | None = None


def parse_image_spec(spec: str) -> tuple[str, int]:
    """'test:19' -> ('test', 19); a clear error for anything else."""
    split, sep, index = spec.strip().partition(":")
    index = index.strip()
    if not sep or split.strip() not in ("train", "test") or not index.isdigit():
        raise JaxoipError(f"bad image {spec!r}: expected SET:INDEX with SET 'train' or 'test', e.g. test:19")
    return split.strip(), int(index)


def get_image(image, data: MNIST | None = None, input_shape: tuple[int, ...] = (28, 28, 1)) -> InputImage:
    """An `InputImage` from a spec 'test:19' / 'train:7', a .npy file, or an array of pixels (0-255).

    Arrays may be (28, 28), (28, 28, 1) or (1, 28, 28, 1). MNIST is loaded (`load_mnist()`) only for a
    spec and only when `data` is None.
    """
    if isinstance(image, InputImage):
        return image
    name = "array"
    if isinstance(image, (str, Path)) and str(image).endswith(".npy"):
        try:
            image, name = np.load(image, allow_pickle=False), Path(image).name
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image file {str(image)!r}: {e}") from None
    elif isinstance(image, str):
        split, index = parse_image_spec(image)
        images, labels = (data if data is not None else load_mnist()).split(split)
        if index >= images.shape[0]:
            raise DataError(
                f"image {split}:{index} is out of range: the {split} set has {images.shape[0]} images "
                f"({split}:0 to {split}:{images.shape[0] - 1})"
            )
        return InputImage(np.asarray(images[index]), f"{split}:{index}", int(labels[index]))
    try:
        pixels = np.asarray(image, np.float32)
    except (TypeError, ValueError):
        raise JaxoipError(
            f"an image must be numeric pixels of shape {input_shape}; got {type(image).__name__}"
        ) from None
    shape = pixels.shape
    if shape == input_shape[:-1] and input_shape[-1] == 1:
        pixels = pixels[..., None]
    elif shape == (1, *input_shape):
        pixels = pixels[0]
    if pixels.shape != input_shape:
        raise JaxoipError(f"an image must have shape {input_shape} (or {input_shape[:-1]}); got {shape}")
    if not np.isfinite(pixels).all():
        raise JaxoipError("the image contains NaN or infinite pixels")
    return InputImage(pixels, name)


def get_images(images, data: MNIST | None = None, input_shape: tuple[int, ...] = (28, 28, 1)) -> list[InputImage]:
    """Several images: a list of specs/arrays, or one comma-separated string 'test:4,test:6'."""
    if isinstance(images, str):
        images = [s for s in images.split(",") if s.strip()]
    images = list(images)
    if not images:
        raise JaxoipError("no images given")
    needs_data = data is None and any(isinstance(i, str) and not i.endswith(".npy") for i in images)
    data = load_mnist() if needs_data else data
    return [get_image(i, data, input_shape) for i in images]


# --- Activations and class probabilities -------------------------------------------------------------------


def image_activations(trained: TrainedModel, pixels, layer_name: str) -> np.ndarray:
    """Activations of `layer_name` for images in pixel units (B, 28, 28, 1), in one jitted batched pass."""
    get_layer(trained.config, layer_name)
    x = trained.standardization(jnp.asarray(pixels, jnp.float32))
    return np.asarray(batched_layer_map(trained.model, x, layer_name))


def dataset_activations(
    trained: TrainedModel, data: MNIST, layer_name: str, split: str = "test", fn=None, batch_size: int = 500
) -> jax.Array:
    """`fn(activations)` of `layer_name` for a whole split, from one jitted `lax.map` over batches.

    Without `fn` the raw activations come back: (10000, 3, 3, 128) floats for Conv2D_3 of the test set
    (46 MB) but 865 MB for Conv2D_1; reduce large layers with `fn` (batch -> per-image results).
    """
    get_layer(trained.config, layer_name)
    images, _ = data.split(split)
    return batched_layer_map(trained.model, trained.standardization(images), layer_name, fn, batch_size)


def _to_probabilities(trained: TrainedModel):
    # The study's output layer is a softmax; a linear output is read as logits.
    if layer_specs(trained.config)[-1].activation == "softmax":
        return None
    return jax.nn.softmax


def class_probabilities(trained: TrainedModel, pixels) -> np.ndarray:
    """Class probabilities (B, classes) for images in pixel units (B, 28, 28, 1)."""
    last = layer_specs(trained.config)[-1].name
    x = trained.standardization(jnp.asarray(pixels, jnp.float32))
    return np.asarray(batched_layer_map(trained.model, x, last, _to_probabilities(trained)))


# --- Layer grids -------------------------------------------------------------------------------------------


def standardize_maps(acts) -> np.ndarray:
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


def activation_grid(acts, per_row: int = 8) -> np.ndarray:
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
    activations: np.ndarray  # the layer's raw output for the image: (H, W, C) or (N,)
    grid: np.ndarray  # (rows * H, per_row * W) displayed values (standardized if asked); NaN in empty cells
    cell_shape: tuple[int, int]
    per_row: int
    standardized: bool
    probabilities: np.ndarray  # (classes,) the model's output for the image

    @property
    def n_maps(self) -> int:
        return int(self.activations.shape[-1])

    def cell(self, map_index: int) -> np.ndarray:
        """The grid cell of map (or node) `map_index`."""
        r, c = divmod(map_index, self.per_row)
        h, w = self.cell_shape
        return self.grid[r * h : (r + 1) * h, c * w : (c + 1) * w]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _layer_and_output(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array, layer_name: str, softmax: bool):
    """A few standardized images' activations at `layer_name` and class probabilities, in one compiled call.

    Compiled once per architecture, layer and batch size, so further grids of the same layer are cheap.
    """
    model = nnx.merge(graphdef, params)
    out = model(x)
    return model(x, until=layer_name), jax.nn.softmax(out) if softmax else out


def _grids(trained, layer_name, images: list[InputImage], per_row: int, standardize: bool) -> list[LayerGrid]:
    graphdef, params = trained.split()
    x = trained.standardization(jnp.asarray(np.stack([i.pixels for i in images]), jnp.float32))
    acts, probs = _layer_and_output(graphdef, params, x, layer_name, _to_probabilities(trained) is not None)
    acts, probs = np.asarray(acts), np.asarray(probs)
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
    image,
    data: MNIST | None = None,
    per_row: int = 8,
    standardize: bool = False,
) -> LayerGrid:
    """The activations of every map of `layer_name` (conv, pool, Flatten or dense) for one image, as a grid.

    `image`: 'test:19', 'train:7', a .npy file or pixels (0-255). `standardize`: the study's per-map
    scaling (`standardize_maps`) for display; `activations` stay raw.
    """
    get_layer(trained.config, layer_name)
    if per_row < 1:
        raise JaxoipError(f"maps per row must be at least 1; got {per_row}")
    img = get_image(image, data, trained.config.input_shape)
    return _grids(trained, layer_name, [img], per_row, standardize)[0]


# --- Comparisons of two groups of images -------------------------------------------------------------------


def _per_map(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and map: mean and max over the map's nodes; a dense layer's node is its own map."""
    acts = np.asarray(acts, np.float64)
    flat = acts.reshape(acts.shape[0], -1, acts.shape[-1]) if acts.ndim == 4 else acts[:, None, :]
    return flat.mean(axis=1), flat.max(axis=1)


def map_summary(acts_a, acts_b, active_level: float = 0.1) -> pd.DataFrame:
    """Per map: mean activation in group A and in group B, their difference, and where the map is active.

    `acts_a` (n_a, H, W, C) or (n_a, N) and `acts_b` likewise are raw layer outputs. A map is active in an
    image when its largest node exceeds `active_level` times the largest activation of all the images.
    `active_a` is the fraction of A's images where it is active; `only_a`: active in every image of A and
    in none of B (and conversely for `only_b`).
    """
    acts_a, acts_b = np.asarray(acts_a), np.asarray(acts_b)
    if acts_a.shape[1:] != acts_b.shape[1:] or acts_a.ndim not in (2, 4) or 0 in (len(acts_a), len(acts_b)):
        raise JaxoipError(
            f"groups need at least one image each and the same layer shape; got {acts_a.shape} and {acts_b.shape}"
        )
    mean_a, max_a = _per_map(acts_a)
    mean_b, max_b = _per_map(acts_b)
    top = max(float(max_a.max()), float(max_b.max()))
    threshold = active_level * top if top > 0 else 0.0
    active_a, active_b = (max_a > threshold).mean(axis=0), (max_b > threshold).mean(axis=0)
    return pd.DataFrame(
        {
            "map": np.arange(mean_a.shape[1]),
            "mean_a": mean_a.mean(axis=0),
            "mean_b": mean_b.mean(axis=0),
            "difference": mean_a.mean(axis=0) - mean_b.mean(axis=0),
            "active_a": active_a,
            "active_b": active_b,
            "only_a": (active_a == 1.0) & (active_b == 0.0),
            "only_b": (active_b == 1.0) & (active_a == 0.0),
        }
    ).set_index("map")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Grids of two groups of images at one layer on one color scale, and per-map statistics."""

    layer_name: str
    names: tuple[str, str]
    grids_a: tuple[LayerGrid, ...]
    grids_b: tuple[LayerGrid, ...]
    vmin: float  # the common color scale of all grids
    vmax: float
    difference_grid: np.ndarray  # raw mean of A minus mean of B, node by node, laid out like the grids
    summary: pd.DataFrame  # `map_summary`, one row per map


def compare_images(
    trained: TrainedModel,
    layer_name: str,
    group_a,
    group_b,
    data: MNIST | None = None,
    names: tuple[str, str] = ("A", "B"),
    per_row: int = 8,
    standardize: bool = False,
    active_level: float = 0.1,
) -> Comparison:
    """Layer grids of two groups of images (e.g. three 4s against three 9s) with per-map statistics.

    Groups are lists of specs/arrays or comma-separated specs ('test:4,test:6'); all images go through
    the network in one batched pass.
    """
    get_layer(trained.config, layer_name)
    if per_row < 1:
        raise JaxoipError(f"maps per row must be at least 1; got {per_row}")
    shape = trained.config.input_shape
    needs_data = data is None and any(
        isinstance(g, str) or any(isinstance(i, str) for i in g) for g in (group_a, group_b)
    )
    data = load_mnist() if needs_data else data
    imgs_a, imgs_b = get_images(group_a, data, shape), get_images(group_b, data, shape)
    grids = _grids(trained, layer_name, imgs_a + imgs_b, per_row, standardize)
    grids_a, grids_b = tuple(grids[: len(imgs_a)]), tuple(grids[len(imgs_a) :])
    acts_a = np.stack([g.activations for g in grids_a])
    acts_b = np.stack([g.activations for g in grids_b])
    if standardize:
        vmin, vmax = 0.0, 255.0
    else:
        vmin = min(float(np.nanmin(g.grid)) for g in grids)
        vmax = max(float(np.nanmax(g.grid)) for g in grids)
    diff = activation_grid(acts_a.mean(axis=0) - acts_b.mean(axis=0), per_row)
    summary = map_summary(acts_a, acts_b, active_level)
    return Comparison(layer_name, tuple(names), grids_a, grids_b, vmin, vmax, diff, summary)


# --- Predictions and the confusion matrix ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Predictions:
    """The model's class probabilities for every image of a split."""

    split: str
    labels: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, classes)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean())

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.predicted, self.probabilities.shape[1])

    def table(self, indices) -> pd.DataFrame:
        """One row per image: its label, the prediction, their probabilities."""
        idx = np.asarray(indices, np.int64)
        p = self.probabilities[idx]
        return pd.DataFrame(
            {
                "image": [f"{self.split}:{i}" for i in idx],
                "index": idx,
                "label": self.labels[idx],
                "predicted": p.argmax(axis=1),
                "p_predicted": p.max(axis=1),
                "p_label": p[np.arange(len(idx)), self.labels[idx]],
            }
        )


def predict_split(trained: TrainedModel, data: MNIST, split: str = "test") -> Predictions:
    """Class probabilities for a whole split in one jitted batched pass."""
    images, labels = data.split(split)
    last = layer_specs(trained.config)[-1].name
    probs = dataset_activations(trained, data, last, split, _to_probabilities(trained))
    return Predictions(split, np.asarray(labels), np.asarray(probs, np.float64))


def misclassified(pred: Predictions, n: int | None = None) -> pd.DataFrame:
    """The wrongly classified images, the most confidently wrong first (at most `n`)."""
    wrong = np.flatnonzero(pred.predicted != pred.labels)
    wrong = wrong[np.argsort(-pred.confidence[wrong], kind="stable")]
    return pred.table(wrong[:n] if n is not None else wrong)


def least_confident(pred: Predictions, n: int = 10) -> pd.DataFrame:
    """The `n` images whose most probable class has the lowest probability, least sure first."""
    order = np.argsort(pred.confidence, kind="stable")[:n]
    table = pred.table(order)
    table["correct"] = table["label"] == table["predicted"]
    return table


def confusion_matrix(labels, predicted, n_classes: int = 10) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    if labels.shape != predicted.shape:
        raise JaxoipError(f"labels {labels.shape} and predictions {predicted.shape} differ in shape")
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def most_confused(cm, n: int = 5) -> pd.DataFrame:
    """The `n` largest off-diagonal counts: true class, predicted class, count, share of the true class,
    and `pair_count`, the confusions of the two classes in both directions."""
    cm = np.asarray(cm)
    off = cm * (1 - np.eye(len(cm), dtype=cm.dtype))
    true, pred = np.unravel_index(np.argsort(-off, axis=None, kind="stable"), cm.shape)
    keep = off[true, pred] > 0
    true, pred = true[keep][:n], pred[keep][:n]
    rows = np.maximum(cm.sum(axis=1), 1)
    return pd.DataFrame(
        {
            "true": true,
            "predicted": pred,
            "count": cm[true, pred],
            "share": cm[true, pred] / rows[true],
            "pair_count": cm[true, pred] + cm[pred, true],
        }
    )


# --- Dataset exemplars -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Exemplars:
    """Top-k images per map: indices into the split, activation of the most active node, that node."""

    layer_name: str
    split: str
    image_indices: np.ndarray  # (C, k)
    values: np.ndarray  # (C, k)
    nodes: np.ndarray  # (C, k, 2) row, column of the most active node
    patches: list[np.ndarray]  # per map: (k, h, w) input pixels of the node's receptive field


def _max_node(acts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per image and map: the largest node activation and its flat position."""
    flat = acts.reshape(acts.shape[0], -1, acts.shape[-1])
    return flat.max(axis=1), jnp.argmax(flat, axis=1)


def find_exemplars(
    trained: TrainedModel,
    data: MNIST,
    layer_name: str = "Conv2D_3",
    k: int = 5,
    split: str = "test",
    precision: str = "highest",
) -> Exemplars:
    """For every map of `layer_name`, the `k` images of `split` whose most active node is highest."""
    spec = get_layer(trained.config, layer_name, ("conv", "pool"))
    images, _ = data.split(split)
    k = max(1, min(k, images.shape[0]))
    best, where = batched_layer_map(
        trained.model, trained.standardization(images), spec.name, _max_node, precision=precision
    )
    # Top k over images per map, on the host (stable: ties keep the lower image index).
    idx = np.argsort(-best.T, axis=1, kind="stable")[:, :k]  # (C, k)
    values = np.take_along_axis(best.T, idx, axis=1)
    flat_node = np.take_along_axis(where.T, idx, axis=1)
    width = layer_shapes(trained.config)[spec.name][1]
    nodes = np.stack([flat_node // width, flat_node % width], axis=-1)
    patches = []
    for m in range(idx.shape[0]):
        crops = []
        for n in range(k):
            r0, r1, c0, c1 = receptive_field(trained.config, spec.name, *nodes[m, n])
            crops.append(images[idx[m, n], r0:r1, c0:c1, 0])
        if len({c.shape for c in crops}) == 1:
            patches.append(np.stack(crops))
        else:  # Fields clipped at the border differ in size; np.asarray would try to broadcast them.
            ragged = np.empty(len(crops), dtype=object)
            ragged[:] = crops
            patches.append(ragged)
    return Exemplars(spec.name, split, idx, values, nodes, patches)


if __name__ == "__main__":  # `python -m jaxoip.activations`: the command lives in `jaxoip.cli.activations`.
    from jaxoip import cli
    from jaxoip.cli.activations import main

    cli.execute(main)
