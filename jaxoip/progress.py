"""One progress display for a job of several phases (tqdm), on by default and off with `progress=False`."""

from __future__ import annotations

import contextlib


class Progress:
    """A single tqdm bar whose description names the current phase; phases add their own work to it.

    Use `phase(name, work)` around each phase and `update(n)` inside it. A disabled Progress does nothing.
    """

    def __init__(self, enabled: bool = True, desc: str = "", unit: str = "step"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=0, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)

    def add_work(self, n: int):
        self.bar.total = (self.bar.total or 0) + n
        self.bar.refresh()

    @contextlib.contextmanager
    def phase(self, name: str, work: int = 1, auto: bool = True):
        """Names the phase and adds `work` units; with `auto`, the phase counts its work done on exit."""
        self.bar.set_description_str(name)
        self.add_work(work)
        yield self
        if auto:
            self.update(work)

    def update(self, n: int = 1):
        self.bar.update(n)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def as_progress(progress, total: int, desc: str, unit: str = "step"):
    """Yields something with `update(n)`: a phase of a caller's `Progress`, or a bar of its own
    (`progress` True) or none (False)."""
    if isinstance(progress, Progress):
        with progress.phase(desc, total, auto=False) as p:
            yield p
        return
    with Progress(bool(progress), desc, unit) as p:
        p.add_work(total)
        yield p
