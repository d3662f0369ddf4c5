"""Transformation robustness and regularizers for the OIP search (Lucid/Lucent's standard set, for 28x28 images,
scaled to the model's input size).

At every step the objective is measured on a randomly jittered, scaled and rotated copy of the image,
so only patterns that survive small transformations are rewarded; penalties on the untransformed image
(total variation, L1, blur) are subtracted. Each image draws its transformation at step t from
`fold_in(image_key, t)`, where the image key comes from the image itself (see `image_keys`), so results
do not depend on which other images share the batch.

The settings are written for the study's 28x28 images; on an image of side S (the larger of H and W)
the jitter is S/28 times as many pixels, the blur is the 3x3 binomial applied round((S/28)^2) times (its
width grows with S) and the total variation is multiplied by S/28 (a pattern scaled up by S/28 has
neighbour differences that much smaller). Scale and rotation are relative already. At 28 pixels nothing
changes.

An L2 penalty is not offered: the search keeps every image standardized (mean 0, standard deviation 1),
so its L2 norm, about any constant, is the same for every image and such a penalty would do nothing.

Styles (`--style` of `python -m jaxoip scan_all_maps`):
- `study`: the study's plain gradient ascent, no transformation, no penalty.
- `robust`: random shift of up to 2 pixels, scale 0.9-1.1 and rotation of up to 10 degrees at every
  step (Lucent's defaults, scaled from 224 to 28 pixels), total variation 0.05 and blur 0.5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxoip.oip.config import STYLES, OIPConfig, style_config  # noqa: F401 - style_config was defined here.


def image_keys(seed: int, images: jax.Array, maps: jax.Array) -> jax.Array:
    """One key per image (N,): fold_in(fold_in(key(seed), fingerprint of the image), map).

    The search function takes no keys, so each image's key is derived from its start image (which
    comes from the run's seed) and its map: the same start always draws the same transformations,
    whatever else is in its batch. The fingerprint is an exact integer hash of the float32 bits.
    """
    bits = jax.lax.bitcast_convert_type(images.reshape(images.shape[0], -1).astype(jnp.float32), jnp.uint32)
    mult = (2 * jnp.arange(bits.shape[1], dtype=jnp.uint32) + 1) * jnp.uint32(2654435761)
    fingerprint = jnp.sum(bits * mult[None, :], axis=1, dtype=jnp.uint32)
    root = jax.random.key(seed)
    return jax.vmap(lambda f, m: jax.random.fold_in(jax.random.fold_in(root, f), m))(
        fingerprint, maps.astype(jnp.uint32)
    )


REFERENCE_SIZE = 28  # The image side the settings are written for.


def size_factor(img: jax.Array) -> float:
    """The image's larger side over 28: how much larger it is than the study's images (static)."""
    return max(img.shape[-3], img.shape[-2]) / REFERENCE_SIZE


def random_affine(key: jax.Array, img: jax.Array, jitter: float, scale: float, rotate: float) -> jax.Array:
    """One image (H, W, C) shifted by up to `jitter` pixels, scaled by 1 +- `scale`, rotated by up to
    `rotate` degrees about its centre (bilinear, reflected at the border); all channels alike."""
    h, w = img.shape[0], img.shape[1]
    k_shift, k_scale, k_rot = jax.random.split(key, 3)
    shift = jax.random.uniform(k_shift, (2,), minval=-jitter, maxval=jitter)
    s = jax.random.uniform(k_scale, (), minval=1.0 - scale, maxval=1.0 + scale)
    theta = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-rotate, maxval=rotate))
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # Output pixel p samples the input at R(-theta) (p - c - shift) / s + c.
    dy, dx = yy - cy - shift[0], xx - cx - shift[1]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src_y = (cos * dy + sin * dx) / s + cy
    src_x = (-sin * dy + cos * dx) / s + cx
    planes = [
        jax.scipy.ndimage.map_coordinates(img[..., c], [src_y, src_x], order=1, mode="reflect")
        for c in range(img.shape[-1])
    ]
    return jnp.stack(planes, axis=-1)


def has_transform(cfg) -> bool:
    return cfg.jitter > 0 or cfg.scale > 0 or cfg.rotate > 0


def transform_batch(cfg, keys: jax.Array, step: jax.Array, images: jax.Array) -> jax.Array:
    """Each image transformed with its own key folded with the step; the jitter scaled to the image size."""
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    jitter = cfg.jitter * size_factor(images)
    return jax.vmap(lambda k, x: random_affine(k, x, jitter, cfg.scale, cfg.rotate))(step_keys, images)


def total_variation(img: jax.Array) -> jax.Array:
    """Mean absolute difference of neighbouring pixels (anisotropic), one image (H, W, C)."""
    return jnp.abs(jnp.diff(img, axis=0)).mean() + jnp.abs(jnp.diff(img, axis=1)).mean()


def blur3(img: jax.Array) -> jax.Array:
    """Binomial 3x3 blur ([1, 2, 1] / 4 in each direction) with reflected borders, one image (H, W, C)."""
    p = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    rows = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]


def blur_passes(img: jax.Array) -> int:
    """How often `blur3` is applied: round((S/28)^2), at least 1, so the blur's width grows with the side S."""
    return max(1, round(size_factor(img) ** 2))


def blur_penalty(img: jax.Array) -> jax.Array:
    """Lucid's `blur_input_each_step`: its gradient pulls the image towards its own blurred copy."""
    blurred = img
    for _ in range(blur_passes(img)):  # Binomial passes add their variances: width ~ sqrt(passes).
        blurred = blur3(blurred)
    return 0.5 * jnp.mean((img - jax.lax.stop_gradient(blurred)) ** 2)


def has_penalty(cfg) -> bool:
    return cfg.tv > 0 or cfg.l1 > 0 or cfg.blur > 0


def penalty(cfg, img: jax.Array) -> jax.Array:
    """Weighted sum of the configured penalties for one image (H, W, C); subtracted from the objective."""
    out = jnp.zeros((), jnp.float32)
    if cfg.tv > 0:
        tv = total_variation(img)
        factor = size_factor(img)
        out = out + cfg.tv * (tv if factor == 1 else factor * tv)
    if cfg.l1 > 0:
        out = out + cfg.l1 * jnp.abs(img).mean()
    if cfg.blur > 0:
        out = out + cfg.blur * blur_penalty(img)
    return out
