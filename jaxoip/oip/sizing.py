"""The OIP search's chunk sized from its compiled program: XLA's memory analysis of the search `run_search`
will run (`compile_search`), the chunk halved until it fits the free memory (`size_search_chunk`)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxoip.compiles import CompileCount, count_compiles
from jaxoip.errors import OutOfMemoryError
from jaxoip.models.memory import ProgramMemory
from jaxoip.oip.config import OIPConfig
from jaxoip.oip.objectives import Objective
from jaxoip.oip.search import SearchSetup, _devices_mesh, _search_chunk


def compile_search(model, objective: Objective, cfg: OIPConfig, setup: SearchSetup, chunk: int) -> jax.stages.Compiled:
    """The compiled search of one chunk of `chunk` images per device, lowered with the arguments `run_search`
    passes (their shapes and placement): the same cache entry, so the search then compiles nothing more."""
    from jaxoip import distributed

    n_dev = len(distributed.devices())
    sharding = NamedSharding(_devices_mesh(), P("batch")) if n_dev > 1 else None
    graphdef, params = nnx.split(model)
    n, (h, w, c) = chunk * n_dev, model.config.input_shape
    x = jax.ShapeDtypeStruct((n, h, w, c), jnp.float32, sharding=sharding)
    maps = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharding)
    data_max = jax.ShapeDtypeStruct((objective.layer.channels,), jnp.float32) if objective.selective > 0 else None
    magnitude = jax.ShapeDtypeStruct((h, w // 2 + 1), jnp.float32) if cfg.param == "maco" else None
    lowered = _search_chunk.lower(
        params, x, maps, data_max, magnitude, graphdef=graphdef, objective=objective, cfg=cfg, setup=setup
    )
    return lowered.compile()


@dataclasses.dataclass(frozen=True)
class ChunkSizing:
    """How the search's chunk was sized: `chunk` images per device, the first candidate's hand estimate
    (`jaxoip.models.memory.bytes_per_image`), XLA's memory analysis of the compiled program of `chunk`
    (None where there is none: the hand estimate decided), the memory available, the chunks tried, and the
    programs their compilation built (counted with the scan's, whose search then builds none)."""

    chunk: int
    estimate: int
    program: ProgramMemory | None
    available: int
    tried: tuple[int, ...]
    compiles: CompileCount = dataclasses.field(default_factory=CompileCount, compare=False)

    def to_dict(self) -> dict:
        """For summary.json: sizes in bytes."""
        return dict(
            chunk=self.chunk,
            estimate_bytes=self.estimate,
            program=None if self.program is None else dataclasses.asdict(self.program),
            needed_bytes=None if self.program is None else self.program.needed,
            available_bytes=self.available,
            chunks_tried=list(self.tried),
        )


def size_search_chunk(
    model, objective: Objective, cfg: OIPConfig, setup: SearchSetup, chunk: int, group: int = 1, explicit: bool = False
) -> ChunkSizing:
    """The chunk (images per device) whose compiled search fits in the free memory, from XLA's memory analysis
    of the program itself: `chunk` (the hand estimate's candidate, or the user's) is compiled and kept when
    it fits, else halved (in multiples of `group`) and compiled again. The program of the chunk chosen is the
    one the search runs (`compile_search`).

    One line (`OutOfMemoryError`) before any search when not even one image (one map's `group` starts)
    fits, or when an `explicit` chunk (the user's --chunk-size) does not, naming the chunk that does.
    With several processes the hand estimate alone decides (their weights are placed otherwise).
    """
    from jaxoip import distributed
    from jaxoip.models import memory

    per_image = memory.bytes_per_image(model.config)
    available = memory.available_bytes()
    helps = (
        "no option makes it smaller: it needs a smaller input or a device with more memory"
        if group == 1
        else "use fewer --restarts (a map's starts share a chunk for the diversity term) or no --diversity"
    )
    if distributed.process_count() > 1:
        memory.check_fits(model.config, chunk, "an OIP search chunk", "--chunk-size")
        return ChunkSizing(chunk, chunk * per_image, None, available, (chunk,), CompileCount())
    # The chunk's start images and targets (and data_max, magnitude) come with each run; the weights are here.
    per_input = (math.prod(model.config.input_shape) + 1) * 4
    extra = 4 * (objective.layer.channels if objective.selective > 0 else 0)
    if cfg.param == "maco":
        h, w = model.config.input_shape[:2]
        extra += 4 * h * (w // 2 + 1)
    # Virtual CPU devices share the host's memory; an accelerator's analysis is per device.
    shared = len(distributed.devices()) if jax.default_backend() == "cpu" else 1
    programs: dict[int, ProgramMemory | None] = {}
    needs: dict[int, tuple[int, str]] = {}

    def measure(c: int) -> tuple[int, str]:
        inputs = c * per_input + extra  # Per device, as the analysis is.
        program = programs[c] = ProgramMemory.of(compile_search(model, objective, cfg, setup, c), inputs)
        if program is None:
            needs[c] = c * per_image, f"about {memory.format_bytes(per_image)} per image, estimated"
        else:
            needs[c] = program.needed * shared, f"XLA's memory analysis: {program.describe()}"
        return needs[c]

    with count_compiles() as compiles:
        fits, _ = memory.fit_chunk(chunk, group, measure, "the OIP search", available, helps)
    if explicit and fits < chunk:
        need, detail = needs[chunk]
        raise OutOfMemoryError(
            f"an OIP search chunk of {chunk} images needs {memory.format_bytes(need)} ({detail}), more than the "
            f"{memory.format_bytes(available)} available on {jax.devices()[0].platform}; use --chunk-size {fits} "
            f"or less"
        )
    return ChunkSizing(fits, chunk * per_image, programs[fits], available, tuple(programs), compiles)
