"""The landing page of `python -m jaxoip microscope`: one section per layer, linking that layer's scan site."""

from __future__ import annotations

import os
from pathlib import Path

from jaxoip.site.render import copy_static, environment
from jaxoip.site.scan_site import SITE_DIR, fmt


def write_microscope_site(folder: str | os.PathLike, layers: list[dict], model: str) -> Path:
    """Writes `folder`/index.html: per layer (dicts with layer, maps, found, woken, dead_on_data, silent_on_noise,
    scan_seconds, thumbs) its counts, some thumbnails and a link to `<layer>/index.html`."""
    folder = Path(folder)
    (folder / SITE_DIR).mkdir(exist_ok=True)
    copy_static(folder / SITE_DIR)
    rows = [{**e, "scan_seconds": fmt(e["scan_seconds"]), "dead_on_data": fmt(e.get("dead_on_data"))} for e in layers]
    (folder / "index.html").write_text(
        environment().get_template("microscope_index.html").render(static=f"{SITE_DIR}/", model=model, layers=rows),
        encoding="utf-8",
    )
    return folder / "index.html"
