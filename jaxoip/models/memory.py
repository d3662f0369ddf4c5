"""Up-front memory estimates, so that a batch or chunk too large for the device fails at once with one line."""

from __future__ import annotations

import math

import jax

from jaxoip.errors import OutOfMemoryError
from jaxoip.models.cnn import ModelConfig, layer_shapes

# Forward activations, their gradients, and XLA's temporaries: a generous multiple of the activations.
_FACTOR = 6


def bytes_per_image(config: ModelConfig) -> int:
    """Rough bytes of live buffers per image of a forward and backward pass through the CNN."""
    floats = math.prod(config.input_shape) + sum(math.prod(s) for s in layer_shapes(config).values())
    return 4 * _FACTOR * floats


def available_bytes() -> int:
    """The first device's memory limit; on a CPU, the host's available memory."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(config: ModelConfig, images: int, what: str, flag: str, fixed_bytes: int = 0):
    """Raises `OutOfMemoryError` naming what fits when `images` per compiled call cannot fit in memory."""
    per = bytes_per_image(config)
    free = available_bytes() - fixed_bytes
    if images * per > free:
        fits = max(0, free // per)
        raise OutOfMemoryError(
            f"{what} of {images} images needs about {images * per / 2**30:.1f} GiB, more than the "
            f"{max(free, 0) / 2**30:.1f} GiB available on {jax.devices()[0].platform}; use {flag} {fits} or less"
        )


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)
