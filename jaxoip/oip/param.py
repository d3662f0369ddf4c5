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

Colour images (C > 1 channels) are transformed channel by channel: the Fourier parameters are
(C, H, W//2+1, 2) and MACO's phases (C, H, W//2+1), one magnitude (the mean over channels) shared by all
channels. A single-channel image keeps the study's parameter shapes (no channel axis).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from jaxoip.oip.config import PARAMETERIZATIONS  # noqa: F401 - defined here before; still found here.


@functools.lru_cache(maxsize=8)
def fourier_scale(h: int, w: int, decay: float) -> np.ndarray:
    """(h, w // 2 + 1) weights 1 / max(f, 1/max(h, w))^decay, normalized to root-mean-square 1."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    scale = 1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay
    return (scale / np.sqrt(np.mean(scale**2))).astype(np.float32)


def maco_magnitude(images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """MACO's fixed magnitude (H, W//2+1) from images (N, H, W, C): their mean orthonormal amplitude
    spectrum (over images and channels), without the mean and the self-conjugate Nyquist terms, scaled to
    images of unit variance per channel."""
    images = np.asarray(images)
    n, h, w, channels = images.shape[0], images.shape[1], images.shape[2], images.shape[3]
    total = np.zeros((h, w // 2 + 1), np.float64)
    for lo in range(0, n, batch):  # In batches: the spectra of 60,000 images at once would take 400 MB.
        for c in range(channels):
            plane = images[lo : lo + batch, ..., c].astype(np.float64)
            total += np.abs(np.fft.rfft2(plane, norm="ortho")).sum(axis=0)
    mag = total / max(n * channels, 1)
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
    cols = (0, width // 2) if width % 2 == 0 else (0,)
    mirrored = -phase[..., (-rows) % h, :][..., list(cols)]
    lower = _lift(jnp.asarray(rows > h // 2)[:, None], mirrored)
    return phase.at[..., list(cols)].set(jnp.where(lower, mirrored, phase[..., list(cols)]))


def _planes(img):
    """One image (H, W, C) as its planes: (H, W) for one channel, (C, H, W) for several."""
    return img[..., 0] if img.shape[-1] == 1 else jnp.moveaxis(img, -1, 0)


def _lift(a, like):
    """`a` with leading axes of size 1 up to the rank of `like` (a colour image's planes carry a channel axis)."""
    a = jnp.asarray(a)
    return a.reshape((1,) * (like.ndim - a.ndim) + a.shape)


def _from_planes(x, shape: tuple[int, int]):
    """Inverse of `_planes`: (H, W) or (C, H, W) back to an image (H, W, C)."""
    return x[..., None] if x.ndim == len(shape) else jnp.moveaxis(x, 0, -1)


def to_params(kind: str, img, decay: float = 1.0):
    """Parameters of one image (H, W, C): the image itself, scaled FFT coefficients ([C,] H, W//2+1, 2), or
    (maco) the FFT's phases ([C,] H, W//2+1); the channel axis only for C > 1."""
    if kind == "pixels":
        return img
    if kind == "maco":
        return jnp.angle(jnp.fft.rfft2(_planes(img), norm="ortho"))
    h, w = img.shape[0], img.shape[1]
    c = jnp.fft.rfft2(_planes(img), norm="ortho")
    c = c / _lift(fourier_scale(h, w, decay), c)
    return jnp.stack([c.real, c.imag], axis=-1)


def to_image(kind: str, p, shape: tuple[int, int], decay: float = 1.0, magnitude=None):
    """The image (H, W, C) of parameters `p` (inverse of `to_params`, not standardized); `magnitude`
    (H, W//2+1) is MACO's fixed amplitude spectrum, shared by the channels."""
    if kind == "pixels":
        return p
    if kind == "maco":
        phase = hermitian_phase(p, shape[1])
        c = _lift(magnitude, phase) * (jnp.cos(phase) + 1j * jnp.sin(phase))
        return _from_planes(jnp.fft.irfft2(c, s=shape, norm="ortho"), shape)
    c = p[..., 0] + 1j * p[..., 1]
    c = c * _lift(fourier_scale(shape[0], shape[1], decay), c)
    return _from_planes(jnp.fft.irfft2(c, s=shape, norm="ortho"), shape)
