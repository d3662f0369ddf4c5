"""Image parameterizations for the OIP search: pixels (the study's) and a decorrelated Fourier basis.

The search always carries a standardized image. At every step it maps the image to parameters, takes
the gradient with respect to the parameters and steps there; the image after the step is standardized
again. With `pixels` both maps are the identity (the study's ascent). With `fourier` (Lucid's fft
image) the parameters are the image's orthonormal real 2-D FFT coefficients divided by a 1/frequency^decay
scale, so a step of fixed size moves low frequencies much more than high ones: the ascent prefers
smooth, large-scale patterns over pixel noise. With a parameterization other than pixels the objective
is differentiated through the standardization, so the search still converges to the best standardized
image (re-standardizing after a preconditioned step would otherwise stop at the preconditioned gradient).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

PARAMETERIZATIONS = ("pixels", "fourier")


@functools.lru_cache(maxsize=8)
def fourier_scale(h: int, w: int, decay: float) -> np.ndarray:
    """(h, w // 2 + 1) weights 1 / max(f, 1/max(h, w))^decay, normalized to root-mean-square 1."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    scale = 1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay
    return (scale / np.sqrt(np.mean(scale**2))).astype(np.float32)


def to_params(kind: str, img, decay: float = 1.0):
    """Parameters of one image (H, W, 1): the image itself, or scaled FFT coefficients (H, W//2+1, 2)."""
    if kind == "pixels":
        return img
    h, w = img.shape[0], img.shape[1]
    c = jnp.fft.rfft2(img[..., 0], norm="ortho") / fourier_scale(h, w, decay)
    return jnp.stack([c.real, c.imag], axis=-1)


def to_image(kind: str, p, shape: tuple[int, int], decay: float = 1.0):
    """The image (H, W, 1) of parameters `p` (inverse of `to_params`, not standardized)."""
    if kind == "pixels":
        return p
    c = (p[..., 0] + 1j * p[..., 1]) * fourier_scale(shape[0], shape[1], decay)
    return jnp.fft.irfft2(c, s=shape, norm="ortho")[..., None]
