"""The scan's static site: `index.html` (one sortable, filterable row per map, with thumbnails) and one page
per map (facets, snapshots, objective trace, precursor per recipe, exemplars, histogram, numbers, neighbours).

Everything is written next to the scan's files, in `folder`: `index.html` and the folder `site/` with the
pages, the images (PNG) and the site's own small CSS and JavaScript; no server, CDN or network is used.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from jaxoip.site import images as im
from jaxoip.site.render import copy_static, environment

SITE_DIR = "site"
SIMILAR = 5  # Most similar maps linked from each map page.
# Filter buttons of the overview, where the table has their columns (e.g. dead_on_data needs MNIST).
PRESETS = (
    ("woken maps only", {"method": "woken"}),
    ("dead on data", {"dead_on_data": "=1"}),
    ("few facets", {"facets": "<=1"}),
    ("no OIP found", {"found": "=0"}),
)
TILE = 3  # Screen pixels per image pixel on the pages (images are stored at their own size).
SHOWN_FACETS = 6  # Facets laid out on a map page; the rest are folded under one "+k more facets" line.
# The overview's first columns, what a reader wants first; the precursor's per-recipe columns (pre_*) come
# last, folded away until asked for.
LEAD = ("map", "target", "best_objective", "method", "facets", "superstimulus", "two_choice_oip")
LEAD += ("two_choice_exemplars", "found", "dead_on_data")


def fmt(v) -> str:
    """A table cell: floats to 4 significant digits, booleans lower case, missing values empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(fmt(x) for x in v)
    return str(v)


def sort_key(v) -> str:
    """The value the overview sorts by: numbers as numbers (booleans 0/1), the rest as text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return repr(float(v))
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], (int, float)):
        return repr(float(len(v)))
    return str(v)


def overview_columns(columns) -> list[str]:
    """The overview's column order: `LEAD` first, then the rest, then the precursor's pre_* columns."""
    columns = list(columns)
    pre = [c for c in columns if c.startswith("pre_")]
    lead = [c for c in LEAD if c in columns]
    return lead + [c for c in columns if c not in lead and c not in pre] + pre


def interval_columns(columns) -> dict[str, tuple[str, str]]:
    """The columns that have a 95% interval beside them (`x_lo`, `x_hi`: the two-choice arms), by name."""
    columns = set(columns)
    return {c: (f"{c}_lo", f"{c}_hi") for c in columns if {f"{c}_lo", f"{c}_hi"} <= columns}


def overview_cells(table) -> tuple[list[str], list[list[dict]]]:
    """The overview's columns and cells; a value with an interval shows it in its cell ("0.78 [0.69, 0.85]",
    sorted by the value), in place of separate `_lo`/`_hi` columns (maps.csv keeps them)."""
    intervals = interval_columns(table.columns)
    bounds = {b for pair in intervals.values() for b in pair}
    cols = [c for c in overview_columns(table.columns) if c not in bounds]
    rows = []
    for rec in table.to_dict("records"):
        row = []
        for c in cols:
            v, text = plain(rec[c]), fmt(plain(rec[c]))
            if c in intervals and text:
                lo, hi = (fmt(plain(rec[b])) for b in intervals[c])
                text = f"{text} [{lo}, {hi}]"
            row.append({"text": text, "key": sort_key(v)})
        rows.append(row)
    return cols, rows


def plain(v):
    """pandas' NA and NumPy scalars as plain Python values."""
    import pandas as pd

    if v is pd.NA:
        return None
    return v.item() if isinstance(v, np.generic) else v


def page_names(map_indices) -> list[str]:
    """Each map's page name: map005.html; a map searched twice (--maps 5,5) gets its position too."""
    maps = [int(m) for m in map_indices]
    dup = {m for m in maps if maps.count(m) > 1}
    return [f"map{m:03d}" + (f"_{p}" if m in dup else "") for p, m in enumerate(maps)]


def _polyline(y: np.ndarray, width: int = 360, height: int = 140, logx: bool = True) -> dict:
    """An SVG polyline of a trace (x = step from 1, log-spaced) inside axes: ticks and labels at the steps
    1, 10, 100, ... and the last, and at the objective's lowest and highest values."""
    y = np.asarray(y, np.float64)
    n = len(y)
    left, right, top, bottom = 52, 8, 6, 22  # Room for the value labels (left) and the step labels (below).
    pw, ph = width - left - right, height - top - bottom

    def xpos(step):
        frac = np.log(step) / max(np.log(n), 1e-9) if logx and n > 1 else (step - 1) / max(n - 1, 1)
        return left + frac * pw

    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    ys = (y - lo) / (hi - lo) if hi > lo else np.full_like(y, 0.5)
    steps = np.arange(1, n + 1, dtype=np.float64)
    pts = " ".join(f"{xpos(sx):.1f},{top + (1 - sy) * ph:.1f}" for sx, sy in zip(steps, ys))
    ticks = [10**k for k in range(int(np.log10(max(n, 1))) + 1) if 10**k < n] + [n]
    if not logx:
        ticks = [1, n] if n > 1 else [1]
    xticks = [{"x": f"{xpos(t):.1f}", "label": str(t)} for t in ticks]
    yticks = [{"y": f"{top + ph:.1f}", "label": fmt(lo)}, {"y": f"{top:.1f}", "label": fmt(hi)}] if hi > lo else []
    if not yticks:
        yticks = [{"y": f"{top + ph / 2:.1f}", "label": fmt(lo)}]
    return {
        "points": pts,
        "width": width,
        "height": height,
        "lo": fmt(lo),
        "hi": fmt(hi),
        "steps": n,
        "axes": {"left": left, "right": width - right, "top": top, "bottom": top + ph},
        "xticks": xticks,
        "yticks": yticks,
    }


def _histogram(edges: np.ndarray, counts: np.ndarray, mark: float, width: int = 320, height: int = 120) -> dict:
    """SVG bars of a histogram, with `mark` (the OIP's objective) as a line where it falls (or at the edge)."""
    top = max(int(counts.max()), 1)
    bw = (width - 8) / len(counts)
    bars = [
        {
            "x": f"{4 + i * bw:.1f}",
            "w": f"{max(bw - 1, 0.5):.1f}",
            "h": f"{c / top * (height - 8):.1f}",
            "y": f"{height - 4 - c / top * (height - 8):.1f}",
            "title": f"{fmt(edges[i])} to {fmt(edges[i + 1])}: {c}",
        }
        for i, c in enumerate(counts.tolist())
    ]
    lo, hi = float(edges[0]), float(edges[-1])
    frac = (mark - lo) / (hi - lo) if hi > lo else 0.5
    beyond = frac > 1
    mx = 4 + min(max(frac, 0.0), 1.0) * (width - 8)
    return {
        "bars": bars,
        "width": width,
        "height": height,
        "lo": fmt(lo),
        "hi": fmt(hi),
        "mark_x": f"{mx:.1f}",
        "mark": fmt(mark),
        "beyond": beyond,
        "total": int(counts.sum()),
    }


def _exemplar_patches(exemplars, m: int):
    """The exemplar patches (pixel units) of map `m` as a list, from `Exemplars` or {map: patches}."""
    if exemplars is None:
        return None
    patches = exemplars.patches[m] if hasattr(exemplars, "patches") else exemplars.get(int(m))
    return None if patches is None else list(patches)


def write_scan_site(
    result,
    folder: str | os.PathLike,
    exemplars=None,
    views=None,
    title: str | None = None,
    model: str | None = None,
) -> Path:
    """Writes the site of `result` (a `ScanResult`) into `folder`; returns the path of its `index.html`.

    `exemplars`: `find_exemplars`' result or its patches by map index; `views`: `data_views`' exemplars with
    their activations (`jaxoip.analysis.data_views`); both optional: a scan without data has neither. The
    activation histograms and the maps' similarities come with `result`; this only draws.
    `model`: what the overview names as the model (default: the scan's --model option).
    """
    folder = Path(folder)
    site = folder / SITE_DIR
    img = site / "img"
    img.mkdir(parents=True, exist_ok=True)
    copy_static(site)
    env = environment()
    table = result.table()
    summary = result.summary(table).to_dict()
    options = summary.get("options") or {}
    model = model or str(options.get("model") or "the shipped reference model")
    maps = [int(m) for m in result.map_indices]
    names = page_names(maps)
    labels = result.labels
    std = result.standardization
    best = result.best_images
    objective = result.objective
    h, w = best.shape[1:3]
    similar, similarity = result.similar_maps(SIMILAR)
    facets = result.facets()
    cols, rows = overview_cells(table)
    thumbs = [f"img/{n}_best.png" for n in names]
    for p, thumb in enumerate(thumbs):
        im.write_png(im.pixels01(std.to_pixels(best[p])), site / thumb)
    settings = _settings(summary)
    common = {"layer": result.layer_name, "model": model, "title": title, "precision": summary["precision"]}
    index_rows = [
        {
            "page": f"{SITE_DIR}/{names[p]}.html",
            "thumb": f"{SITE_DIR}/{thumbs[p]}",
            "label": labels[p],
            "cells": rows[p],
        }
        for p in range(len(maps))
    ]
    (folder / "index.html").write_text(
        env.get_template("scan_index.html").render(
            **common,
            root="",
            static=f"{SITE_DIR}/",
            columns=cols,
            folded=sum(c.startswith("pre_") for c in cols),
            rows=index_rows,
            presets=[(label, f) for label, f in PRESETS if set(f) <= set(cols)],
            settings=settings,
            counts=_counts(summary),
            tile=h * TILE,
            files=_scan_files(folder),
        ),
        encoding="utf-8",
    )
    snap_steps = list(result.oip.snapshot_steps)
    for p, m in enumerate(maps):
        page = _map_page(result, p, m, names, facets[p], objective[p], snap_steps, exemplars, views, site, h)
        nav = {
            "prev": f"{names[p - 1]}.html" if p > 0 else None,
            "next": f"{names[p + 1]}.html" if p + 1 < len(maps) else None,
            "prev_label": labels[p - 1] if p > 0 else None,
            "next_label": labels[p + 1] if p + 1 < len(maps) else None,
        }
        sims = [
            {"page": f"{names[q]}.html", "label": labels[q], "thumb": thumbs[q], "r": fmt(similarity[p, i])}
            for i, q in enumerate(similar[p].tolist())
        ]
        numbers = [{"name": c, "value": rows[p][i]["text"]} for i, c in enumerate(cols)]
        (site / f"{names[p]}.html").write_text(
            env.get_template("scan_map.html").render(
                **common,
                root="../",
                static="",
                label=labels[p],
                map=m,
                nav=nav,
                similar=sims,
                numbers=numbers,
                thumb=thumbs[p],
                tile=h * TILE,
                tile_w=w * TILE,
                **page,
            ),
            encoding="utf-8",
        )
    return folder / "index.html"


def _map_page(result, p, m, names, facet, objective, snap_steps, exemplars, views, site, h) -> dict:
    """Writes one map's images; returns what its page shows of them."""
    std = result.standardization
    name = names[p]
    imgs = result.images[p]
    facets = []
    for f, rep in enumerate(facet.representatives.tolist()):
        starts = [int(s) for s in np.flatnonzero(facet.labels == facet.labels[rep])]
        starts.sort(key=lambda s: -objective[s])
        raw = np.stack([np.asarray(std.to_pixels(imgs[s])) for s in starts])
        outside = float(np.mean((raw < 0) | (raw > 255)))  # Clipped in the plain view.
        plain = im.strip([im.pixels01(std.to_pixels(imgs[s])) for s in starts])
        enh = im.strip([im.enhanced(imgs[s]) for s in starts])
        files = (f"img/{name}_facet{f}.png", f"img/{name}_facet{f}_enhanced.png")
        im.write_png(plain, site / files[0])
        im.write_png(enh, site / files[1])
        shown = [{"start": s, "objective": fmt(objective[s]), "woken": bool(result.woken[p, s])} for s in starts]
        facets.append(
            {
                "index": f,
                "plain": files[0],
                "enhanced": files[1],
                "n": len(starts),
                "clipped": f"{outside:.1%}" if outside > 0 else None,
                "width": plain.shape[1] * TILE,
                "starts": shown,
                "alt": f"facet {f}: " + ", ".join(f"start {s['start']} (objective {s['objective']})" for s in shown),
            }
        )
    flat = p * result.restarts + int(result.best_start[p])
    snaps = result.oip.snapshots[flat]
    snap_file = f"img/{name}_snapshots.png"
    snap = im.strip([im.enhanced(s) for s in snaps])
    im.write_png(snap, site / snap_file)
    trace = result.oip.traces[flat]
    snapshots = {
        "file": snap_file,
        "width": snap.shape[1] * TILE,
        "steps": [{"step": s + 1, "objective": fmt(trace[min(s, len(trace) - 1)])} for s in snap_steps],
    }
    pre = result.precursor
    precursor = [
        {
            "recipe": r,
            "frac": fmt(pre.frac_active[m, i]),
            "mean": fmt(pre.mean[m, i]),
            "max": fmt(pre.max[m, i]),
            "best": i == int(pre.best_recipe[m]),
        }
        for i, r in enumerate(pre.recipes)
    ]
    ex = None
    if views is not None and m < len(views.images):
        tiles = im.exemplar_tiles(views.images[m], views.heat[m])
        if len(tiles):
            f = f"img/{name}_exemplars.png"
            sheet = im.strip(list(tiles))
            im.write_png(sheet, site / f)
            ex = {
                "file": f,
                "width": sheet.shape[1] * TILE,
                "overlay": True,
                "beside": views.colour,
                "tile_w": tiles.shape[2] * TILE,
                "items": [
                    {
                        "image": int(views.image_indices[m, k]),
                        "value": fmt(views.values[m, k]),
                        "class_name": views.class_names[m][k] if m < len(views.class_names) else "",
                    }
                    for k in range(len(tiles))
                ],
            }
        else:
            ex = {"dead": True}
    else:
        patches = _exemplar_patches(exemplars, m)
        if patches is not None and len(patches):
            ph = max(pt.shape[0] for pt in patches)
            pw = max(pt.shape[1] for pt in patches)
            tiles = [np.full((ph, pw), np.nan, np.float32) for _ in patches]
            for t, pt in zip(tiles, patches):
                t[: pt.shape[0], : pt.shape[1]] = im.pixels01(pt)
            f = f"img/{name}_exemplars.png"
            sheet = im.strip(tiles)
            im.write_png(sheet, site / f)
            ex = {"file": f, "width": sheet.shape[1] * TILE, "overlay": False, "items": [{} for _ in patches]}
        elif patches is not None:
            ex = {"dead": True}
    hist = None
    if result.data_histogram is not None:
        edges, counts = result.data_histogram
        hist = _histogram(edges[m], counts[m], float(objective.max()))
    return {
        "facets": facets[:SHOWN_FACETS],
        "more": _folded(facets[SHOWN_FACETS:]),
        "unfaceted": int(np.sum(facet.labels < 0)),
        "snapshots": snapshots,
        "trace": _polyline(trace),
        "precursor": precursor,
        "precursor_starts": pre.starts,
        "exemplars": ex,
        "histogram": hist,
        "restarts": result.restarts,
    }


def _folded(facets: list[dict]) -> dict | None:
    """The facets beyond the first `SHOWN_FACETS`, folded: how many, their starts and objectives, and the facets."""
    if not facets:
        return None
    best = [f["starts"][0]["objective"] for f in facets]  # Each facet's best start leads its list.
    return {"facets": facets, "n": len(facets), "starts": sum(f["n"] for f in facets), "hi": best[0], "lo": best[-1]}


def _settings(summary: dict) -> list[dict]:
    """The run's settings as name/value rows: the summary's scalars, then the search's config and the options."""
    rows = []
    for k, v in summary.items():
        if k in ("oip_config", "options", "quality", "phase_seconds"):
            continue
        rows.append({"name": k, "value": fmt(v) if not isinstance(v, dict) else json.dumps(v, default=str)})
    for group in ("oip_config", "options"):
        for k, v in (summary.get(group) or {}).items():
            rows.append({"name": f"{group}.{k}", "value": fmt(v) if not isinstance(v, dict) else json.dumps(v)})
    return rows


def _counts(summary: dict) -> list[tuple[str, str]]:
    keys = ("maps", "found", "woken", "silent_on_noise", "dead_on_data", "restarts", "steps", "precision", "seed")
    return [(k.replace("_", " "), fmt(summary[k])) for k in keys if summary.get(k) is not None]


def _scan_files(folder: Path) -> list[str]:
    """The scan's other outputs beside index.html, linked from the overview."""
    wanted = ("gallery.png", "maps.csv", "maps.json", "summary.json", "oips.npz")
    return [n for n in wanted if (folder / n).exists()]
