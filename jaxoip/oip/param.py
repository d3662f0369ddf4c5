"""Image parameterizations for the OIP search: pixels (the study's), a decorrelated Fourier basis, and MACO.

The search always carries a standardized image. At every step it maps the image to parameters, takes
the gradient with respect to the parameters and steps there; the image after the step is standardized
again. With `pixels` both maps are the identity (the study's ascent). With `fourier` (Lucid's fft
image) the parameters are the image's orthonormal real 2-D FFT coefficients divided by a 1/frequency^decay
scale, so a step of fixed size moves low frequencies much more than high ones: the ascent prefers
smooth, large-scale patterns over pixel noise. With a parameterization other than pixels the objective
is differentiated through the standardization, so the search still converges to the best standardized
image (re-standardizing after a preconditioned step would otherwise stop at the preconditioned gradient).

With `maco` (Fel et al., "Unlocking feature visualization for deeper networks with magnitude constrained
optimization", NeurIPS 2023) the parameters are the phases of the image's real 2-D FFT and the magnitude
is fixed: the image is irfft2(magnitude * exp(i * phase)). The magnitude (`maco_magnitude`) is the mean
amplitude spectrum of the training images, with the mean (DC) and the self-conjugate Nyquist coefficients
set to zero and scaled so that the image has unit variance. As Xplique's and Horama's, the image is then
standardized; unlike them it is not squashed by a sigmoid into a pixel range, and the phase is not itself
normalized, as every parameterization here carries standardized images and recovers the parameters
from them at each step. The phases of the Hermitian-paired coefficients (columns 0 and W/2) are
tied (`hermitian_phase`), so that the spectrum is that of a real image: then every
standardized MACO image has exactly the amplitude spectrum `magnitude` (up to float rounding),
whatever its phase.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

PARAMETERIZATIONS = ("pixels", "fourier", "maco")


@functools.lru_cache(maxsize=8)
def fourier_scale(h: int, w: int, decay: float) -> np.ndarray:
    """(h, w // 2 + 1) weights 1 / max(f, 1/max(h, w))^decay, normalized to root-mean-square 1."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    scale = 1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay
    return (scale / np.sqrt(np.mean(scale**2))).astype(np.float32)


def maco_magnitude(images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """MACO's fixed magnitude (H, W//2+1) from images (N, H, W, 1): their mean orthonormal amplitude
    spectrum, without the mean and the self-conjugate Nyquist terms, scaled to images of unit variance."""
    images = np.asarray(images)
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    total = np.zeros((h, w // 2 + 1), np.float64)
    for lo in range(0, n, batch):  # In batches: the spectra of 60,000 images at once would take 400 MB.
        total += np.abs(np.fft.rfft2(images[lo : lo + batch, ..., 0].astype(np.float64), norm="ortho")).sum(axis=0)
    mag = total / max(n, 1)
    # Self-conjugate coefficients are real: a phase there would change their magnitude. The mean is
    # removed by the standardization anyway.
    for i in {0, h // 2} if h % 2 == 0 else {0}:
        for j in {0, w // 2} if w % 2 == 0 else {0}:
            mag[i, j] = 0.0
    # Parseval (orthonormal FFT): the image's sum of squares is the full spectrum's; the half
    # spectrum counts every column twice except column 0 (and W/2 for even W).
    weight = np.full(mag.shape[1], 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    energy = (mag**2 * weight).sum()
    if not energy > 0:
        return mag.astype(np.float32)
    return (mag * np.sqrt(h * w / energy)).astype(np.float32)


def hermitian_phase(phase, width: int):
    """Phases (H, W//2+1) of an image `width` wide made those of a real image: in the Hermitian-paired
    columns (0, and W/2 for even W), coefficient (-k, j) is the conjugate of (k, j), so rows k > H/2
    take the negated phase of row H - k (one of each pair is free, and angles need no wrapping)."""
    phase = jnp.asarray(phase)
    h = phase.shape[-2]
    rows = np.arange(h)
    lower = jnp.asarray(rows > h // 2)[:, None]
    cols = (0, width // 2) if width % 2 == 0 else (0,)
    mirrored = -phase[..., (-rows) % h, :][..., list(cols)]
    return phase.at[..., list(cols)].set(jnp.where(lower, mirrored, phase[..., list(cols)]))


def to_params(kind: str, img, decay: float = 1.0):
    """Parameters of one image (H, W, 1): the image itself, scaled FFT coefficients (H, W//2+1, 2), or
    (maco) the FFT's phases (H, W//2+1)."""
    if kind == "pixels":
        return img
    if kind == "maco":
        return jnp.angle(jnp.fft.rfft2(img[..., 0], norm="ortho"))
    h, w = img.shape[0], img.shape[1]
    c = jnp.fft.rfft2(img[..., 0], norm="ortho") / fourier_scale(h, w, decay)
    return jnp.stack([c.real, c.imag], axis=-1)


def to_image(kind: str, p, shape: tuple[int, int], decay: float = 1.0, magnitude=None):
    """The image (H, W, 1) of parameters `p` (inverse of `to_params`, not standardized); `magnitude`
    (H, W//2+1) is MACO's fixed amplitude spectrum."""
    if kind == "pixels":
        return p
    if kind == "maco":
        phase = hermitian_phase(p, shape[1])
        c = magnitude * (jnp.cos(phase) + 1j * jnp.sin(phase))
        return jnp.fft.irfft2(c, s=shape, norm="ortho")[..., None]
    c = (p[..., 0] + 1j * p[..., 1]) * fourier_scale(shape[0], shape[1], decay)
    return jnp.fft.irfft2(c, s=shape, norm="ortho")[..., None]
