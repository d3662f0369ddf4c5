"""Counting XLA compilations: how many programs a piece of work builds (a behaviour the tests pin down)."""

from __future__ import annotations

import contextlib
import dataclasses

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
PASS_CACHE_HIT_EVENT = "/jaxoip/pass_cache/hits"  # jaxoip.passes: a pass read back, not run.


@dataclasses.dataclass
class CompileCount:
    """Programs built (`programs`), of which `cache_hits` came from the persistent cache and `compiled`
    were compiled by XLA; `seconds` is the time spent building them; `passes_read`: passes over images read
    from `jaxoip.passes` instead of run (their programs neither built nor loaded)."""

    programs: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    passes_read: int = 0

    @property
    def compiled(self) -> int:
        return self.programs - self.cache_hits

    def add(self, other: CompileCount) -> None:
        """Counts `other`'s programs in this count too (work done before the block, e.g. a plan's)."""
        self.programs += other.programs
        self.cache_hits += other.cache_hits
        self.seconds += other.seconds
        self.passes_read += other.passes_read


@contextlib.contextmanager
def count_compiles():
    """Counts the XLA compilations inside the block: `with count_compiles() as c: ...; c.compiled`."""
    import jax

    count = CompileCount()

    def on_duration(event: str, duration: float, **_):
        if event == BACKEND_COMPILE_EVENT:  # Recorded for persistent-cache hits too.
            count.programs += 1
            count.seconds += duration

    def on_event(event: str, **_):
        if event == CACHE_HIT_EVENT:
            count.cache_hits += 1
        elif event == PASS_CACHE_HIT_EVENT:
            count.passes_read += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
