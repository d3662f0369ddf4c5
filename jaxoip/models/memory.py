"""Up-front memory estimates, so that a batch or chunk too large for the device fails at once with one line."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

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
    return host_available_bytes()


def _proc_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_available_bytes() -> int:
    """The host memory a new array can still take: the available memory, within the address-space limit."""
    import resource

    free = _proc_kib("/proc/meminfo", "MemAvailable:")
    if free is None:
        free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # Under `ulimit -v` an allocation beyond the limit aborts inside XLA, whatever the free memory.
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        free = min(free, limit - (_proc_kib("/proc/self/status", "VmSize:") or 0))
    return max(0, free)


def format_bytes(n: float) -> str:
    """`n` bytes in decimal units, e.g. '2.4 TB', '23 GB'."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            break
        n /= 1000
    return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"


@dataclasses.dataclass(frozen=True)
class PlannedArray:
    """An array a run will hold: the options that size it, what it is, how its bytes add up, and where it lives."""

    options: str  # e.g. "--screen 10000000"
    what: str  # e.g. "the candidate images"
    formula: str  # e.g. "128 maps x 8 restarts x 10000000 screen x 28x28x1x4 bytes"
    nbytes: int
    device: bool = True  # False: host memory only (NumPy results)


def check_arrays(planned: Sequence[PlannedArray]) -> None:
    """Raises `OutOfMemoryError` naming the options and the cause when a planned array cannot fit in memory.

    Computed from the sizes alone, before any work: an array too large for the device or the host would
    otherwise abort inside XLA (or the allocator) with no useful message.
    """
    if not planned:
        return
    host = host_available_bytes()
    device = available_bytes() if any(p.device for p in planned) else host
    for p in sorted(planned, key=lambda p: -p.nbytes):
        free = device if p.device else host
        if p.nbytes > free:
            raise OutOfMemoryError(
                f"{p.options} needs {format_bytes(p.nbytes)} for {p.what} ({p.formula}); "
                f"available: {format_bytes(free)}"
            )


def check_fits(config: ModelConfig, images: int, what: str, flag: str, fixed_bytes: int = 0):
    """Raises `OutOfMemoryError` naming what fits when `images` per compiled call cannot fit in memory."""
    per = bytes_per_image(config)
    free = available_bytes() - fixed_bytes
    if images * per > free:
        fits = max(0, free // per)
        if fits == 0:  # No option helps: the model itself is too large.
            name, shape = max(layer_shapes(config).items(), key=lambda item: math.prod(item[1]))
            raise OutOfMemoryError(
                f"the model is too large for this device: one image needs about {per / 2**30:.1f} GiB, more than "
                f"the {max(free, 0) / 2**30:.1f} GiB available on {jax.devices()[0].platform} (its largest layer, "
                f"{name}, is {'x'.join(map(str, shape))})"
            )
        raise OutOfMemoryError(
            f"{what} of {images} images needs about {images * per / 2**30:.1f} GiB, more than the "
            f"{max(free, 0) / 2**30:.1f} GiB available on {jax.devices()[0].platform}; use {flag} {fits} or less"
        )


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """What XLA's memory analysis of a compiled program says it takes on one device, in bytes: its
    temporaries, its arguments and its outputs; `inputs`: those of the arguments that a run brings (the
    others, e.g. the weights, are in memory already)."""

    temp: int
    arguments: int
    outputs: int
    aliased: int = 0
    inputs: int = 0

    @classmethod
    def of(cls, compiled, inputs: int = 0) -> ProgramMemory | None:
        """The analysis of a `jax.stages.Compiled`; None where the backend gives none."""
        try:
            stats = compiled.memory_analysis()
        except (NotImplementedError, AttributeError, RuntimeError):
            return None
        if stats is None:
            return None
        return cls(
            int(stats.temp_size_in_bytes),
            int(stats.argument_size_in_bytes),
            int(stats.output_size_in_bytes),
            int(stats.alias_size_in_bytes),
            int(inputs),
        )

    @property
    def needed(self) -> int:
        """The memory a run of the program takes beyond what is already there."""
        return max(0, self.temp + self.outputs + min(self.inputs, self.arguments) - self.aliased)

    def describe(self) -> str:
        return (
            f"{format_bytes(self.temp)} temporaries + {format_bytes(self.outputs)} outputs + "
            f"{format_bytes(min(self.inputs, self.arguments))} inputs"
        )


def fit_chunk(
    chunk: int, group: int, measure: Callable[[int], tuple[int, str]], what: str, free: int, helps: str = ""
) -> tuple[int, int]:
    """(the chunk, its bytes): the largest of `chunk`, then halved (a multiple of `group`, at least `group`),
    whose `measure(chunk)` -> (bytes needed, how they add up) fits in `free` bytes (`available_bytes()`).

    One line (`OutOfMemoryError`) when not even `group` images fit: what was needed, what is available,
    and `helps`, the option that needs less.
    """
    while True:
        need, detail = measure(chunk)
        if need <= free:
            return chunk, need
        if chunk <= group:
            break
        chunk = max(group, (chunk // 2) // group * group)
    images = "one image" if group == 1 else f"{group} images (one map's starts)"
    raise OutOfMemoryError(
        f"{what} of {images} needs {format_bytes(need)} ({detail}), more than the {format_bytes(free)} available "
        f"on {jax.devices()[0].platform}{'; ' + helps if helps else ''}"
    )


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)
