"""Static web sites of jaxoip's results: open `index.html` from disk in any browser (no server, no network).

`write_scan_site` writes a scan's site (`python -m jaxoip scan_all_maps` does, unless --no-html),
`write_compare_site` a seed comparison's (`compare_seeds`), `write_microscope_site` the landing page of
`microscope`; `jaxoip.site.notebook.scan_html` is a scan's view in Jupyter (`ScanResult._repr_html_`, registered
in `jaxoip.display`).
"""

from jaxoip.site.compare_site import write_compare_site
from jaxoip.site.microscope_site import write_microscope_site
from jaxoip.site.scan_site import write_scan_site

__all__ = ["write_compare_site", "write_microscope_site", "write_scan_site"]
