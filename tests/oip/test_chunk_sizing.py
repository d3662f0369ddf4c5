"""The search's chunk is sized from XLA's memory analysis of the compiled search, before any work (issue 25)."""

import numpy as np
import pytest

from jaxoip import cli
from jaxoip.compiles import count_compiles
from jaxoip.errors import OutOfMemoryError
from jaxoip.models.memory import ProgramMemory
from jaxoip.oip.objectives import resolve_objective
from jaxoip.oip.plan import plan_scan
from jaxoip.oip.search import OIPConfig, SearchSetup, run_search
from jaxoip.oip.sizing import compile_search, size_search_chunk

CFG = OIPConfig(steps=3)
SMALL = dict(config=CFG, precursor_starts=2, screen=1, quality=None)


def _objective(reference):
    return resolve_objective(reference.model, "Conv2D_3", None, None, ())


def _needed(reference, chunk: int) -> int:
    """What the compiled search of `chunk` images needs beyond the weights and inputs, by XLA's analysis."""
    program = ProgramMemory.of(compile_search(reference.model, _objective(reference), CFG, SearchSetup(), chunk))
    return program.temp + program.outputs


def test_the_chunk_shrinks_until_the_compiled_search_fits(reference, monkeypatch):
    free = _needed(reference, 8) + 300_000  # Room for 8 images' search (and their inputs), not for 16.
    assert _needed(reference, 16) > free
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: free)
    # A hand estimate far too low proposes the full 32 images; the compiled program's analysis shrinks them.
    monkeypatch.setattr("jaxoip.models.memory.bytes_per_image", lambda config: 1)
    plan = plan_scan(reference, "Conv2D_3", range(8), restarts=4, **SMALL)
    assert plan.chunk == 8 and plan.sizing.tried == (32, 16, 8)
    assert plan.sizing.program.needed <= free < _needed(reference, 16)
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: 8 * 2**30)
    assert plan_scan(reference, "Conv2D_3", range(8), restarts=4, **SMALL).chunk == 32


def test_the_search_runs_the_program_the_plan_compiled(reference):
    with count_compiles() as planned:
        plan = plan_scan(reference, "Conv2D_3", range(4), restarts=3, **SMALL)
    assert planned.programs == 1 and plan.sizing.compiles.programs == 1 and plan.chunk == 12
    x0 = np.zeros((12, 28, 28, 1), np.float32)
    with count_compiles() as searched:
        run_search(reference.model, plan.objective, np.repeat(plan.maps, 3), x0, CFG, plan.chunk, fixed_chunk=True)
    assert searched.programs == 0


def test_an_explicit_chunk_too_large_names_the_chunk_that_fits(reference, monkeypatch):
    free = _needed(reference, 8) + 300_000
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: free)
    with pytest.raises(OutOfMemoryError, match=r"chunk of 32 images needs .*XLA's memory analysis.*--chunk-size 8 or"):
        plan_scan(reference, "Conv2D_3", range(8), restarts=4, chunk_size=32, **SMALL)
    assert plan_scan(reference, "Conv2D_3", range(8), restarts=4, chunk_size=8, **SMALL).chunk == 8


def test_one_image_too_large_is_refused_in_one_line_before_any_search(reference, monkeypatch, capsys, tmp_path):
    free = _needed(reference, 1) // 2  # The planned arrays (a few kB) fit; one image's search does not.
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: free)

    def no_search(*args, **kwargs):
        raise AssertionError("a search ran")

    monkeypatch.setattr("jaxoip.oip.groups.run_search", no_search)
    monkeypatch.setattr("jaxoip.oip.scan.run_precursor", no_search)
    from jaxoip.cli import scan_all_maps

    argv = ["--maps", "0", "--restarts", "1", "--steps", "3", "--precursor-starts", "2", "--screen", "1"]
    assert cli.run(scan_all_maps.main, [*argv, "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the OIP search of one image needs "), err
    assert "XLA's memory analysis" in err and "available on cpu" in err and "device with more memory" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(OutOfMemoryError, match="4 images .one map's starts.* fewer --restarts"):
        size_search_chunk(
            reference.model,
            _objective(reference),
            OIPConfig(steps=3, diversity=1.0),
            SearchSetup(group=4),
            8,
            group=4,
        )


def test_bad_start_images_are_refused_before_the_sizing_compiles(reference):
    from jaxoip.errors import JaxoipError
    from jaxoip.oip.search import search_oips

    bad = np.full((2, 28, 28, 1), np.nan, np.float32)
    with count_compiles() as compiles, pytest.raises(JaxoipError, match="start images"):
        search_oips(reference.model, "Conv2D_3", [0, 1], bad, OIPConfig(steps=3))
    assert compiles.programs == 0
