"""Counting XLA compilations: how many programs a piece of work builds (a behaviour the tests pin down)."""

from __future__ import annotations

import contextlib
import dataclasses

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileCount:
    """Programs compiled by XLA (`compiled`) and programs loaded from the persistent cache (`cache_hits`)."""

    compiled: int = 0
    cache_hits: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def count_compiles():
    """Counts the XLA compilations inside the block: `with count_compiles() as c: ...; c.compiled`."""
    count = CompileCount()

    def on_duration(event: str, duration: float, **_):
        if event == BACKEND_COMPILE_EVENT:
            count.compiled += 1
            count.seconds += duration

    def on_event(event: str, **_):
        if event == CACHE_HIT_EVENT:
            count.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
