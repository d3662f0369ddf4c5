"""One progress display for a job of several phases (tqdm), on by default and off with `progress=False`."""

from __future__ import annotations

import contextlib
import time
import warnings


def tqdm_class():
    """`tqdm.auto.tqdm`: widgets in a notebook with ipywidgets, else the text bar.

    Without ipywidgets, tqdm.auto warns 'IProgress not found' once, at its import, and falls back to the
    text bar; that fallback is what we want, so the warning is silenced here (every jaxoip bar comes from here).
    """
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm


class Progress:
    """A single tqdm bar of a job's work (e.g. image-steps); its description names the current phase.

    `add_work(n)` plans work, `update(n)` counts it done, `skip(n)` counts work done by an earlier
    (killed) process, which is not part of the rate, so the estimate stays honest after a resume.
    `phase(name, work)` names a phase and times it. A disabled Progress only times phases.
    """

    def __init__(self, enabled: bool = True, desc: str = "", unit: str = "step"):
        self.bar = tqdm_class()(total=0, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
        self.seconds: dict[str, float] = {}  # Wall time of every phase, by name.
        self._planned = 0  # Work in the total already, which the phase that does it will add again.

    def plan(self, n: int):
        """Puts `n` units of a later phase's work in the total now, so that the bar has a total from the start
        (the later phase's own `add_work` of them then adds nothing)."""
        self.add_work(n)
        self._planned += n

    def add_work(self, n: int):
        planned = min(n, self._planned)
        self._planned -= planned
        self.bar.total = (self.bar.total or 0) + n - planned
        self.bar.refresh()

    @contextlib.contextmanager
    def phase(self, name: str, work: int = 0, auto: bool = True):
        """Names the phase and adds `work` units; with `auto`, the phase counts its work done on exit."""
        self.bar.set_description_str(name)
        if work:
            self.add_work(work)
        t0 = time.perf_counter()
        yield self
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
        if auto and work:
            self.update(work)

    def update(self, n: int = 1):
        if self.bar.disable:
            self.bar.n += n  # A disabled tqdm counts nothing; the count is still asked for (`done`).
        else:
            self.bar.update(n)

    def skip(self, n: int):
        """Counts `n` units done elsewhere (resumed from disk): they advance the bar but not its rate."""
        b = self.bar
        b.n += n
        if not b.disable:
            # tqdm's average rate is (n - initial) / elapsed and its smoothed rate counts n - last_print_n.
            b.initial += n
            b.last_print_n += n
            b.refresh()

    @property
    def done(self) -> int:
        return int(self.bar.n)

    @property
    def total(self) -> int:
        return int(self.bar.total or 0)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WeightedPart(Progress):
    """A part of a parent `Progress` worth `work` of its units, counted by its own units (e.g. chunks).

    The parent's total is not changed (the caller planned `work`); `phase(name, n)` sets the part's own
    size `n`, and `update(k)` of its units advances the parent proportionally, `work` in all at `n`.
    """

    def __init__(self, parent: Progress, work: int):
        self.parent, self.work, self.size, self.count = parent, int(work), 1, 0
        self.bar, self.seconds = parent.bar, parent.seconds

    @contextlib.contextmanager
    def phase(self, name: str, work: int = 0, auto: bool = True):
        """Sets the part's own size to `work` units (the parent's description and phase times stay)."""
        self.size, self.count = max(1, int(work)), 0
        yield self
        if auto:
            self.update(self.size - self.count)

    def update(self, n: int = 1):
        before = self.work * self.count // self.size
        self.count = min(self.size, self.count + n)
        self.parent.update(self.work * self.count // self.size - before)

    def skip(self, n: int):
        self.parent.skip(n)

    def close(self):
        pass


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
