"""Static web sites of jaxoip's results: open `index.html` from disk in any browser (no server, no network).

`write_scan_site` writes a scan's site (`python -m jaxoip scan_all_maps` does, unless --no-html).
"""

from jaxoip.site.scan_site import write_scan_site

__all__ = ["write_scan_site"]
