"""The sites' Jinja2 environment (autoescaped: layer names, paths and model names are shown as text) and their
own stylesheet and script, copied beside the pages."""

from __future__ import annotations

import functools
import shutil
from importlib import resources
from pathlib import Path

import jinja2

STATIC = ("site.css", "site.js")
SCAN_TEMPLATES = ("scan_index.html", "scan_map.html")


@functools.cache
def environment() -> jinja2.Environment:
    """Templates of `jaxoip/site/templates`, every expression HTML-escaped, undefined names an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("jaxoip.site", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def compile_scan_templates() -> None:
    """Compiles a scan site's templates into `environment()`'s cache (`jaxoip._prefetch` does it ahead)."""
    for name in SCAN_TEMPLATES:
        environment().get_template(name)


def copy_static(folder: Path) -> None:
    """Copies the sites' CSS and JavaScript into `folder`."""
    src = resources.files("jaxoip.site") / "static"
    for name in STATIC:
        with resources.as_file(src / name) as f:
            shutil.copyfile(f, Path(folder) / name)
