"""Input images for the analyses: data set specs ('test:19'), .npy files or pixel arrays, checked once.

An `InputImage` carries pixels (0-255) of the model's input shape and where they came from; the layer
grids (`jaxoip.analysis.grids`) and group comparisons (`jaxoip.analysis.grid_comparison`) take images in
any of these forms.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike, Float

from jaxoip._check import check_finite_images
from jaxoip.data.mnist import MNIST, check_data_shape, load_mnist
from jaxoip.errors import DataError, JaxoipError


@dataclasses.dataclass(frozen=True)
class InputImage:
    """One input image in pixel units (0-255) of the model's input shape (H, W, C), with where it came from."""

    pixels: Float[np.ndarray, "H W ch"]
    name: str  # "test:19", "train:7", a file name, or "array"
    label: int | None = None


# An image as the analyses take it: an `InputImage`, a spec 'test:19', a .npy file, or pixels (0-255) of
# shape (H, W), (H, W, ch) or (1, H, W, ch).
ImageSource = InputImage | str | os.PathLike | Float[ArrayLike, "*image"]


def parse_image_spec(spec: str) -> tuple[str, int]:
    """'test:19' -> ('test', 19); a clear error for anything else."""
    split, sep, index = spec.strip().partition(":")
    index = index.strip()
    if not sep or split.strip() not in ("train", "test") or not index.isdigit():
        raise JaxoipError(f"bad image {spec!r}: expected SET:INDEX with SET 'train' or 'test', e.g. test:19")
    return split.strip(), int(index)


def get_image(image: ImageSource, data: MNIST | None = None, input_shape: tuple[int, ...] = (28, 28, 1)) -> InputImage:
    """An `InputImage` of `input_shape` (H, W, C) from a spec 'test:19' / 'train:7' of `data`, a .npy file, or
    an array of pixels (0-255).

    Arrays may be (H, W, C) or (1, H, W, C), and (H, W) for one channel. MNIST is loaded (`load_mnist()`)
    only for a spec and only when `data` is None.
    """
    if isinstance(image, InputImage):
        check_finite_images(f"the image {image.name}", np.asarray(image.pixels)[None])
        return image
    name = "array"
    if isinstance(image, (str, Path)) and str(image).endswith(".npy"):
        try:
            image, name = np.load(image, allow_pickle=False), Path(image).name
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image file {str(image)!r}: {e}") from None
    elif isinstance(image, str):
        split, index = parse_image_spec(image)
        data = data if data is not None else load_mnist()
        check_data_shape(data, input_shape)
        images, labels = data.split(split)
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
    check_finite_images(f"the image {name}", pixels[None])
    return InputImage(pixels, name)


def get_images(
    images: str | Sequence[ImageSource], data: MNIST | None = None, input_shape: tuple[int, ...] = (28, 28, 1)
) -> list[InputImage]:
    """Several images: a list of specs/arrays, or one comma-separated string 'test:4,test:6'."""
    if isinstance(images, str):
        images = [s for s in images.split(",") if s.strip()]
    images = list(images)
    if not images:
        raise JaxoipError("no images given")
    needs_data = data is None and any(isinstance(i, str) and not i.endswith(".npy") for i in images)
    data = load_mnist() if needs_data else data
    return [get_image(i, data, input_shape) for i in images]
