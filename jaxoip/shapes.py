"""Array shapes in jaxoip's annotations: jaxtyping dtypes and shapes, and the dimension names they use.

The annotations are documentation: nothing checks them at run time (`tests/test_typing.py` checks a few
against real outputs). A name stands for the same size everywhere in one function's signature.

Images and layers:

- `n`: images (a batch, a split of MNIST, one row per image); `n_a`, `n_b` for two groups of images.
- `H W ch`: an input image's height, width and channels (28, 28, 1 for MNIST).
- `h w c`: a conv or pool layer's map height, width and number of maps.
- `*layer`: one image's output of a layer: `h w c` for conv and pool layers, `nodes` for Flatten and dense.
- `classes`: the output layer's classes (10).
- `grid_h grid_w`: a layer grid in cells of `h x w` (a dense layer's node is a 1x1 cell).
- `fh fw`: a receptive field's height and width in input pixels.
- `H Wr`: an image's real 2-D Fourier spectrum (`rfft2`: `Wr` = W // 2 + 1 columns), e.g. MACO's magnitude.

Searches and training:

- `m`: maps searched (map positions); `r`: starts (restarts) per map; `m*r` both flattened.
- `k`: images kept per map (exemplars); `steps`: optimization steps or batches of an epoch;
  `snapshots`: the saved steps of a search; `recipes`: the noise recipes of a precursor scan; `b`: a batch.

Comparing two models:

- `c_a c_b`: the compared layer's channels in model A and model B; `samples`: feature vectors (one per
  image and sampled position).
"""

import numpy as np
from jaxtyping import ArrayLike, Float, Int

# A layer's output for a batch of images, as NumPy.
LayerActivations = Float[np.ndarray, " n *layer"]
# Map indices into a layer's maps (or units of a dense layer).
MapIndices = Int[ArrayLike, " m"]
