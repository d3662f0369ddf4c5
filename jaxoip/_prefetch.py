"""Imports done on a thread of their own while the main thread waits for XLA (`prefetch_imports`)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

# What a job imports only to write its files (tables, clusters, figures): imported on another thread while the
# data pass runs, where the main thread only waits for XLA (`prefetch_imports`).
WRITER_MODULES = ("pandas", "scipy.cluster.hierarchy", "matplotlib.backends.backend_agg", "jaxoip.oip.figures")
_prefetched = threading.Event()


def prefetch_imports(modules: Sequence[str] = WRITER_MODULES) -> None:
    """Imports `modules` on a daemon thread, once per process: a job's figures and tables then find them
    imported, their import time spent while the main thread waits for XLA's pass. A module the main thread
    needs sooner waits for the thread's import of it (Python's per-module import lock); a failure here is
    left for the main thread's own import to report."""
    if _prefetched.is_set():
        return
    _prefetched.set()

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the main thread's import reports it, in its own words
                return

    threading.Thread(target=run, name="jaxoip-prefetch", daemon=True).start()
