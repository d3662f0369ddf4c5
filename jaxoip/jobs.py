"""The main jobs, whole: a planned scan into a folder of files and a site (`run_scan`), and several layers'
scans under one landing page (`run_microscope`). The commands `scan_all_maps` and `microscope` parse their
flags and call these; a notebook calls them the same way and gets the same folder:

    plan = jaxoip.plan_scan(trained, "Conv2D_3", maps=range(8), restarts=3)
    run = jaxoip.run_scan(plan, jaxoip.load_mnist(), "scan_out")   # maps.csv, oips.npz, gallery, site

A job runs alike on every process of a multi-process run (`jaxoip.distributed`): the search is shared, then
only process 0 writes files while the others return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from jaxoip import distributed
from jaxoip._io import OutputDir
from jaxoip._prefetch import wait_prefetched
from jaxoip.analysis.data_views import data_views
from jaxoip.compiles import CompileCount, count_compiles
from jaxoip.data.mnist import MNIST
from jaxoip.errors import JaxoipError
from jaxoip.models.checkpoint import model_checksum
from jaxoip.models.cnn import TrainedModel
from jaxoip.oip.groups import saved_groups
from jaxoip.oip.plan import ScanPlan
from jaxoip.oip.scan import scan_layer, write_scan_files
from jaxoip.oip.scan_result import ScanResult
from jaxoip.progress import Progress
from jaxoip.site import write_microscope_site, write_scan_site

# Room the files of a scan take, asked of the disk before any work (`jaxoip._io.prepare_output`).
EXPECTED_BYTES = 64 * 2**20
REFERENCE_MODEL = "the shipped reference model"


@dataclasses.dataclass(frozen=True)
class ScanRun:
    """What `run_scan` did: the scan's `result` (on every process), the folder it wrote (`path`: None on the
    processes other than 0, which write nothing), whether it resumed an interrupted run, the programs the job
    built (the site's included), the scan's seconds and the whole job's."""

    result: ScanResult
    path: Path | None
    resumed: bool
    compiles: CompileCount
    scan_seconds: float
    seconds: float


def run_scan(
    plan: ScanPlan,
    data: MNIST | None,
    out: str | os.PathLike | OutputDir | None,
    *,
    snapshot_maps: Iterable[int] | None = None,
    all_starts: bool = False,
    site: bool = True,
    progress: bool | Progress = True,
    options: dict | None = None,
    extra_summary: dict | None = None,
    model: str | None = None,
    started: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> ScanRun:
    """Runs the scan `plan` (`jaxoip.oip.plan.plan_scan`) with `data` (or None: no data columns, exemplars
    nor measures that need it) and writes it into `out`: gallery.png, maps.csv, maps.json, summary.json,
    oips.npz (`write_scan_files`), snapshot strips of `snapshot_maps`, and with `site` the browsable site
    (index.html and site/, with the exemplars' activation overlays when the scan found exemplars).

    `out`: a folder path, new or empty or one jaxoip wrote, by the rules of `jaxoip._io.prepare_output`
    (`overwrite`, `resume`: a killed run's finished search groups are kept there and reused); or an
    `OutputDir` a command has prepared (`distributed.main_output`: None on the processes other than 0).
    The model and data must be the interrupted run's on resume. `all_starts`: every start's image in
    oips.npz too. `progress`: a display of the job (or a `Progress` to report into). `options`: the
    command's options, recorded in the summary; `extra_summary`: more summary.json fields; `model`: how
    the site names the model (default: the `model` option, else the shipped reference model); `started`:
    the `time.perf_counter()` the job's `command_seconds` count from (default: now).

    Call it on every process of a multi-process run: they search together, then the others return
    (their `ScanRun` has the result and no path) while process 0 writes.
    """
    started = time.perf_counter() if started is None else started
    snapshot_maps = None if snapshot_maps is None else [int(m) for m in snapshot_maps]
    record = {**_plan_record(plan), "all_starts": all_starts, "site": site, "snapshot_maps": snapshot_maps}
    bar = _progress(progress, f"scan {plan.layer.name}")
    with _opened(out, "run_scan", record, overwrite, resume) as o, bar as bar:
        checksum = check_inputs(o, plan.trained, data)
        return _scan_into(
            plan,
            data,
            o,
            bar,
            checksum,
            snapshot_maps=snapshot_maps,
            all_starts=all_starts,
            site=site,
            options=options,
            extra_summary=extra_summary,
            model=model,
            started=started,
        )


def run_microscope(
    plans: Sequence[ScanPlan],
    data: MNIST | None,
    out: str | os.PathLike | OutputDir | None,
    *,
    progress: bool = True,
    options: dict | None = None,
    model: str | None = None,
    started: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> list[ScanRun]:
    """`run_scan` of each plan (one per layer, e.g. `microscope_layers`) into `out`/<layer>/ (files and site),
    then `out`/index.html, the landing page: one section per layer, linking its site. `out`, `overwrite`,
    `resume`, `options`, `model` and `started` as for `run_scan`; a resumed run keeps every layer's finished
    search groups. On every process of a multi-process run: the layers' searches are shared, and between
    two layers the others wait for process 0's files."""
    started = time.perf_counter() if started is None else started
    names = [p.layer.name for p in plans]
    if not plans or len(set(names)) < len(names):
        raise JaxoipError(f"run_microscope needs plans of distinct layers, got {names}")
    for name in names:  # Each layer's folder lies inside `out`, beside no file jaxoip keeps there (".jaxoip*").
        if Path(name).name != name or name.startswith(".") or "\\" in name:
            raise JaxoipError(f"layer {name!r} cannot name a folder inside {out}; choose the layers with --layers")
    record = {"layers": [_plan_record(p) for p in plans]}
    label = model or str((options or {}).get("model") or REFERENCE_MODEL)
    runs, entries = [], []
    with _opened(out, "run_microscope", record, overwrite, resume) as o, _kept_on_interrupt(plans, o):
        checksum = check_inputs(o, plans[0].trained, data)
        for i, plan in enumerate(plans):
            name = plan.layer.name
            sub = None if o is None else _inside(o, name)
            with Progress(progress and distributed.is_main(), f"microscope {name}", unit="image-step") as bar:
                run = _scan_into(
                    plan,
                    data,
                    sub,
                    bar,
                    checksum,
                    options=options,
                    model=label,
                    started=started,
                    leave=i == len(plans) - 1,
                )
            runs.append(run)
            if o is not None:
                entries.append(_landing_entry(run, o.staging))
        if o is not None:
            write_microscope_site(o.staging, entries, model=label)
    return runs


@contextlib.contextmanager
def _kept_on_interrupt(plans: Sequence[ScanPlan], out: OutputDir | None) -> Iterator[None]:
    """A bare Ctrl-C of a microscope that kept work becomes one that says what it kept and how to go on."""
    try:
        yield
    except KeyboardInterrupt as e:
        kept = None if out is None or str(e) else microscope_kept(plans, out.partial)
        if kept is None:
            raise
        raise KeyboardInterrupt(
            f"the work done is kept in {out.path}: {kept} (the files and sites are written once every layer is "
            "done); run the command again with --resume"
        ) from None


def microscope_kept(plans: Sequence[ScanPlan], partial: str | os.PathLike) -> str | None:
    """What the microscope's layers have saved in `partial` (its kept-work folder), in words: the layers whose
    search is finished, and the saved groups of one that is not; None when nothing is saved."""
    finished, started = [], []
    for plan in plans:
        name = plan.layer.name
        kept, total = saved_groups(Path(partial) / name / "search", len(plan.maps) * plan.restarts, plan.chunk)
        if kept == total:
            finished.append(name)
        elif kept:
            started.append(f"{kept} of {total} search groups of {name}")
    words = [f"the finished search{'es' if len(finished) > 1 else ''} of {', '.join(finished)}"] if finished else []
    words += started
    return "; ".join(words) or None


def microscope_layers(trained: TrainedModel) -> list[str]:
    """The microscope's default layers: every convolution's block, then the last layer when it holds one value
    per class (the logits). A block is the convolution with the batch normalizations and activation layers
    right after it: in a Conv -> BN -> ReLU chain the unit a reader means is the ReLU's, not the linear
    convolution's (the study's convolutions carry their ReLU: their block is themselves)."""
    layers = trained.model.layers
    blocks = []
    for i, layer in enumerate(layers):
        if layer.kind != "conv":
            continue
        end = i
        while end + 1 < len(layers) and layers[end + 1].kind in ("batchnorm", "activation"):
            end += 1
        blocks.append(layers[end].name)
    return blocks + ([layers[-1].name] if layers[-1].is_vector else [])


def check_inputs(out: OutputDir | None, trained: TrainedModel, data: MNIST | None) -> str | None:
    """Records the checksums of the model and data in `out` (process 0's; None on the others); a resumed
    run with other inputs stops every process (`distributed.agree`). Returns the data's checksum."""
    checksum = data.checksum() if data else None
    error = None
    try:
        if out is not None:
            out.check_inputs(model=model_checksum(trained), data=checksum or "none")
    except JaxoipError as e:
        error = e
    distributed.agree(error, "the resume check")
    return checksum


def _scan_into(
    plan: ScanPlan,
    data: MNIST | None,
    out: OutputDir | None,
    bar: Progress,
    data_checksum: str | None,
    *,
    snapshot_maps: Iterable[int] | None = None,
    all_starts: bool = False,
    site: bool = True,
    options: dict | None = None,
    extra_summary: dict | None = None,
    model: str | None = None,
    started: float,
    leave: bool = True,
) -> ScanRun:
    """The scan of `plan` on every process, then its files and site in `out.staging` on process 0.
    `leave`: the processes part after the search (the job's last); else the others wait, unbounded by the
    run's timeout, until process 0 has written, so that the next scan starts together."""
    main = distributed.is_main()
    t0 = time.perf_counter()
    with count_compiles() as compiles:
        # The plan compiled the search's program to size its chunk: that compilation is this run's.
        compiles.add(plan.sizing.compiles)
        partial = None if out is None else out.partial / "search"
        result = scan_layer(plan, data, bar, partial)
        if options is not None:
            result.options = dict(options)
        scan_seconds = time.perf_counter() - t0
        processes = distributed.process_count()
        if leave:
            # Files and site are process 0's alone: the others leave now, all at once, rather than wait at
            # JAX's shutdown barrier (whose timeout is not the run's) while process 0 goes on.
            distributed.leave()
        error = None
        if main:
            try:  # The counts and seconds are filled in as the files are written (`_write`).
                extra = {
                    **(extra_summary or {}),
                    "compiled_programs": 0,
                    "cached_programs": 0,
                    "cached_passes": compiles.passes_read,  # Passes over the data read back (jaxoip.passes).
                    "command_seconds": 0.0,
                    "phase_seconds": bar.seconds,
                    "data_source": data.source if data else None,
                    "data_checksum": data_checksum,
                    "processes": processes,
                    "scan_seconds": round(scan_seconds, 2),
                    "search_memory": plan.sizing.to_dict(),
                }
                _write(plan, data, out, bar, result, extra, compiles, started, snapshot_maps, all_starts, site, model)
            except (JaxoipError, OSError) as e:
                if leave:
                    raise
                error = e
        if not leave:
            distributed.agree(error, f"the files of {plan.layer.name}", watch=False)
    path = None if out is None else out.path
    return ScanRun(result, path, bool(out and out.resumed), compiles, scan_seconds, time.perf_counter() - t0)


def _write(plan, data, out, bar, result, extra, compiles, started, snapshot_maps, all_starts, site, model):
    """Process 0's part: the files, then the site, into `out.staging`; summary.json counts the site's programs."""
    if out is None:
        raise JaxoipError("run_scan needs an output folder on process 0")
    folder = out.staging
    folder.mkdir(parents=True, exist_ok=True)
    exemplars = result.exemplars
    with bar.phase("figures and tables"):
        wait_prefetched()
        extra.update(
            compiled_programs=compiles.compiled,
            cached_programs=compiles.cache_hits,
            cached_passes=compiles.passes_read,
            command_seconds=round(time.perf_counter() - started, 2),
        )
        write_scan_files(result, folder, snapshot_maps, all_starts, exemplars, extra)
    if site:
        with bar.phase("site"):
            _site(plan, data, result, folder, model)
        # The site compiles too: summary.json counts what the command's console line counts.
        extra.update(
            compiled_programs=compiles.compiled, cached_programs=compiles.cache_hits, cached_passes=compiles.passes_read
        )
        summary = folder / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), **extra}, indent=1))


def _site(plan: ScanPlan, data: MNIST | None, result: ScanResult, folder: Path, model: str | None) -> None:
    """The browsable site: with exemplars, also the scanned maps' activation overlays (the maps' histograms come
    with the result)."""
    exemplars, views = result.exemplars, None
    if exemplars is not None:
        views = data_views(
            plan.trained, data, plan.layer.name, exemplars, plan.config.precision, maps=result.map_indices
        )
    write_scan_site(result, folder, exemplars=exemplars, views=views, model=model)


def _landing_entry(run: ScanRun, staging: Path) -> dict:
    """A layer's section of the microscope's landing page."""
    s = run.result.summary()
    name = s.layer
    thumbs = sorted((staging / name / "site" / "img").glob("*_best.png"))[:16]
    return {
        "layer": name,
        "maps": s.maps,
        "found": s.found,
        "woken": s.woken,
        "dead_on_data": s.dead_on_data,
        "silent_on_noise": s.silent_on_noise,
        "scan_seconds": run.scan_seconds,
        "seconds": run.seconds,
        "thumbs": [f"{name}/site/img/{p.name}" for p in thumbs],
    }


def _plan_record(plan: ScanPlan) -> dict:
    """What a plan computes, as JSON-able values: the output folder's record, which a resume must match."""
    quality = None if plan.quality is None else dataclasses.asdict(plan.quality)
    return {
        "layer": plan.layer.name,
        "maps": [int(m) for m in plan.maps],
        "node": plan.node,
        "restarts": plan.restarts,
        "config": dataclasses.asdict(plan.config),
        "recipes": [r.name for r in plan.recipes],
        "precursor_starts": plan.precursor_starts,
        "screen": plan.screen,
        "seed": plan.seed,
        "chunk": plan.chunk,
        "quality": quality,
        "facet_threshold": plan.facet_threshold,
        "exemplars": plan.exemplars,
    }


def _inside(out: OutputDir, name: str) -> OutputDir:
    """`out`'s subfolder `name`: its files staged in `out.staging`/`name`, its search kept in `out.partial`/`name`."""
    return dataclasses.replace(out, path=out.path / name, staging=out.staging / name, partial=out.partial / name)


@contextlib.contextmanager
def _opened(out, command: str, record: dict, overwrite: bool, resume: bool) -> Iterator[OutputDir | None]:
    """`out` prepared: a path through `distributed.main_output` (None on the processes other than 0), or the
    `OutputDir` (or None) a command prepared, as it is."""
    if isinstance(out, (str, os.PathLike)):
        with distributed.main_output(out, command, record, overwrite, resume, EXPECTED_BYTES) as o:
            yield o
        return
    if out is not None and not isinstance(out, OutputDir):
        raise JaxoipError(f"out must be a folder path or a prepared OutputDir, got {type(out).__name__}")
    if out is None and distributed.is_main():
        raise JaxoipError("out must be a folder path (None only on the processes other than 0 of a run)")
    yield out


@contextlib.contextmanager
def _progress(progress: bool | Progress, desc: str) -> Iterator[Progress]:
    """The caller's `Progress`, or one of this job's own (shown on process 0 only), closed at the end."""
    if isinstance(progress, Progress):
        yield progress
        return
    with Progress(bool(progress) and distributed.is_main(), desc, unit="image-step") as bar:
        yield bar
