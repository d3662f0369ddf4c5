"""A scan's view in Jupyter: a compact table with inline thumbnails (`ScanResult._repr_html_`, through the view
registered for it in `jaxoip.display`)."""

from __future__ import annotations

from jaxoip.site import images as im
from jaxoip.site.render import environment
from jaxoip.site.scan_site import fmt, plain

# The columns a notebook row shows (the full table is `result.table()`).
COLUMNS = ("best_objective", "method", "facets", "silent_on_noise", "dead_on_data", "data_max", "superstimulus")
MAX_ROWS = 256  # More maps: the first ones, and a line saying how many are left out.


def scan_html(result, max_rows: int = MAX_ROWS) -> str:
    """The scan's summary line and one row per map: best OIP (plain and contrast-enhanced, as PNG data URIs),
    label and a few of `table()`'s columns."""
    table = result.table()
    cols = [c for c in COLUMNS if c in table]
    best = result.best_images
    pixels = result.standardization.to_pixels(best)
    s = result.summary()
    rows = []
    for p, rec in enumerate(table.head(max_rows).to_dict("records")):
        rows.append(
            {
                "label": result.labels[p],
                "plain": im.data_uri(im.pixels01(pixels[p])),
                "enhanced": im.data_uri(im.enhanced(best[p])),
                "cells": [fmt(plain(rec[c])) for c in cols],
            }
        )
    return (
        environment()
        .get_template("notebook.html")
        .render(
            layer=result.layer_name,
            summary=s,
            columns=cols,
            rows=rows,
            left_out=max(0, len(table) - max_rows),
            size=best.shape[1] * 2,
        )
    )
