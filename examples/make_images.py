"""Writes `my_images.npz`, the README's own images: 1,200 + 300 generated 32x32x3 images of 10 classes.

Each image is dark noise with one bright square; its class sets the square's corner (class % 4) and colour
channel (class % 3). The file is a Keras-style `.npz` (`x_train`, `y_train`, `x_test`, `y_test`), the same
from one run to the next; an existing file is left alone.
"""

import sys
from pathlib import Path

import numpy as np


def make_images(path: str | Path = "my_images.npz") -> Path:
    """Writes the images to `path` (refusing to overwrite a file) and returns the path."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it or name another file")
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 80, (n, 32, 32, 3)).astype(np.uint8)
        for i, c in enumerate(y):
            r, q = divmod(c % 4, 2)
            x[i, 16 * r : 16 * r + 12, 16 * q : 16 * q + 12, c % 3] = 200 + 5 * c
        return x, y

    (x_train, y_train), (x_test, y_test) = make(1200), make(300)
    with path.open("xb") as f:  # "x": never replaces a file that appeared meanwhile.
        np.savez(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


if __name__ == "__main__":
    try:
        print(f"wrote {make_images(*sys.argv[1:2])}")
    except FileExistsError as e:
        sys.exit(f"make_images: {e}")
