"""Imports done on a thread of their own while the main thread waits for XLA (`prefetch_imports`)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

# What a job imports only to write its files (tables, clusters, figures): imported on another thread while the
# search and the passes run, where the main thread mostly waits for XLA (`prefetch_imports`).
WRITER_MODULES = ("pandas", "scipy.cluster.hierarchy", "matplotlib.backends.backend_agg", "jaxoip.oip.figures")
# What they first do once per process, done on the same thread after the imports: "module:function" called once.
WRITER_WARMUPS = ("jaxoip.site.render:compile_scan_templates", "jaxoip.figures:warm_up_text")
_prefetched = threading.Event()
_thread: list[threading.Thread] = []


def prefetch_imports(modules: Sequence[str] = WRITER_MODULES, warmups: Sequence[str] = WRITER_WARMUPS) -> None:
    """Imports `modules` and then runs `warmups` on a daemon thread, once per process: a job's figures and tables
    then find them imported, their import time spent while the main thread waits for XLA. A module the
    main thread needs sooner waits for the thread's import of it (Python's per-module import lock); a failure
    here is left for the main thread's own import or call to report. `wait_prefetched` before drawing."""
    if _prefetched.is_set():
        return
    _prefetched.set()

    def run():
        try:
            for name in modules:
                importlib.import_module(name)
            for name in warmups:
                module, function = name.split(":")
                getattr(importlib.import_module(module), function)()
        except Exception:  # noqa: BLE001 - the main thread's import or call reports it, in its own words
            return

    _thread.append(threading.Thread(target=run, name="jaxoip-prefetch", daemon=True))
    _thread[0].start()


def wait_prefetched() -> None:
    """Waits for `prefetch_imports`' thread, if one runs: matplotlib is not thread-safe, so its warm-up ends
    before the main thread draws (it has mostly ended long before: it starts with the search)."""
    for thread in _thread:
        thread.join()
