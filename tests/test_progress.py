"""The scan's progress in image-steps, its quiet notebook fallback, resumed timings and the summary object."""

import dataclasses
import json
import sys
import types
import warnings

import numpy as np
import pytest

from jaxoip.data.mnist import Standardization
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.oip import groups as search_groups
from jaxoip.oip import scan
from jaxoip.oip.scan_result import ScanSummary
from jaxoip.oip.search import OIPConfig
from jaxoip.progress import Progress, WeightedPart

KWARGS = dict(map_indices=[0, 1, 2], restarts=2, config=OIPConfig(steps=4), precursor_starts=4, screen=2, seed=5)


def _untrained() -> TrainedModel:
    return TrainedModel(model=init_model(ModelConfig(), 0), standardization=Standardization(0.13, 0.31))


class _Recording(Progress):
    """A real (enabled) bar that also records every increment."""

    def __init__(self):
        super().__init__(True, "scan", unit="image-step")
        self.increments, self.skipped = [], []

    def update(self, n=1):
        self.increments.append(n)
        super().update(n)

    def skip(self, n):
        self.skipped.append(n)
        super().skip(n)


def test_weighted_part_spreads_its_work_over_its_units():
    with Progress(False) as bar:
        bar.add_work(10)
        part = WeightedPart(bar, 10)
        with part.phase("chunks", 3, auto=False):
            for _ in range(3):
                part.update(1)
        assert bar.done == bar.total == 10
        part = WeightedPart(bar, 5)
        bar.add_work(5)
        with part.phase("chunks", 2):  # auto: whatever was not counted is counted on exit
            part.update(1)
        assert bar.done == bar.total == 15


def test_scan_progress_counts_the_planned_image_steps_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(search_groups, "GROUP_CHUNKS", 2)
    bar = _Recording()
    with bar:
        res = scan.scan_maps(_untrained(), chunk_size=2, progress=bar, **KWARGS)
    planned = 3 * 2 * 4  # maps * restarts * steps
    assert bar.total == planned and bar.done == planned
    assert bar.increments == [8, 8, 8]  # One per chunk of 2 images, 4 steps each.
    assert bar.bar.unit == "image-step"
    assert set(bar.seconds) == {"precursor scan", "screening starts", "OIP search Conv2D_3"}
    assert res.seconds >= res.search_seconds > 0 and res.earlier_search_seconds == 0


def _fake_notebook(monkeypatch):
    """What tqdm.autonotebook sees in a Jupyter kernel without ipywidgets; tqdm's modules imported afresh."""
    shell = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets: ImportError
    for name in ("tqdm.auto", "tqdm.autonotebook", "tqdm.notebook"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_no_iprogress_warning_in_a_notebook_without_ipywidgets(monkeypatch):
    from tqdm.std import tqdm as std_tqdm

    _fake_notebook(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Progress(True, "scan", unit="image-step") as bar:
            bar.add_work(3)
            bar.update(3)
    assert not [w for w in caught if "IProgress" in str(w.message)], [str(w.message) for w in caught]
    assert isinstance(bar.bar, std_tqdm) and bar.done == 3  # The text bar.
    # The check above can fail: tqdm.auto itself warns in this setting.
    _fake_notebook(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tqdm.auto  # noqa: F401
    assert any("IProgress" in str(w.message) for w in caught)


def test_resumed_scan_reports_this_run_and_the_earlier_one_apart(tmp_path, monkeypatch):
    trained = _untrained()
    monkeypatch.setattr(search_groups, "GROUP_CHUNKS", 1)  # Groups of 2 images: 3 groups.
    real, calls = search_groups.run_search, []

    def killed_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(search_groups, "run_search", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        scan.scan_maps(trained, partial_dir=tmp_path, chunk_size=2, progress=False, **KWARGS)
    monkeypatch.setattr(search_groups, "run_search", real)
    saved = 0.0
    for path in sorted(tmp_path.glob("group_*.npz")):
        with np.load(path) as z:
            saved += float(z["seconds"])
    bar = _Recording()
    with bar:
        res = scan.scan_maps(trained, partial_dir=tmp_path, chunk_size=2, progress=bar, **KWARGS)
    assert res.earlier_search_seconds == pytest.approx(saved) and saved > 0
    assert res.seconds >= res.search_seconds > 0
    assert bar.skipped == [8, 8] and bar.increments == [8] and bar.done == bar.total == 24
    s = res.summary()
    assert s.seconds >= s.search_seconds and s.earlier_search_seconds == round(saved, 2)
    total_seconds = res.search_seconds + res.earlier_search_seconds
    assert s.image_steps_per_second == pytest.approx(24 / total_seconds, rel=0.01)
    assert "before the resume" in str(s)


def test_scan_summary_is_a_readable_frozen_record(tmp_path, mnist):
    trained = _untrained()
    small = dataclasses.replace(mnist, test_images=mnist.test_images[:64], test_labels=mnist.test_labels[:64])
    res = scan.scan_maps(trained, data=small, progress=False, **KWARGS)
    s = res.summary()
    assert isinstance(s, ScanSummary)
    with pytest.raises(AttributeError):
        s.found = 0
    text = str(s)
    assert len(text.splitlines()) <= 5 and repr(s).startswith("ScanSummary")
    for part in ("Conv2D_3", f"found for {s.found} of 3", f"woken {s.woken}", f"silent on noise {s.silent_on_noise}"):
        assert part in text
    assert f"dead on data {s.dead_on_data}" in text and s.precision in text
    d = s.to_dict()
    assert d["dead_on_data"] == s.dead_on_data and d["live_maps"] + d["dead_on_data"] == 3
    scan.write_scan_files(res, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(d))
    # Without data the data counts are left out of summary.json, as before.
    res.data_max = res.data_mean = None
    d = res.summary().to_dict()
    assert "dead_on_data" not in d and "live_maps" not in d and "dead on data n/a" in str(res.summary())
