"""The scan's site against the gallery, in one process, on the same scan: build time and size.

Runs the default scan of `python -m jaxoip scan_all_maps` (reference model, Conv2D_3, all 128 maps, the CPU's
8 starts or an accelerator's 16, 600 steps, 3 exemplars) in memory, then times, each on the same `ScanResult`:
- the gallery (`jaxoip.oip.figures.oip_gallery` with facets and exemplars, written as the command writes it);
- the site: the activation histograms (`objective_histograms`, on the scan's own data pass), `data_views`
  (exemplar overlays: one forward pass of the exemplar images) and `write_scan_site` (pages and PNGs).
The exemplars (`find_exemplars`) and the facets, which both use, are computed before either is timed.
Reports the seconds, the ratio site / gallery (issue 17: at most 2) and the site's size (at most 25 MB).

    python experiments/bench_site.py                      # the default scan
    python experiments/bench_site.py --steps 50           # quicker: the figures hardly depend on the steps
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--restarts", type=int, default=None)
    p.add_argument("--maps", type=int, default=None, help="the first N maps (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="timings per figure; the fastest is reported")
    p.add_argument("--keep", default=None, help="write the site to this folder (default: a temporary one)")
    args = p.parse_args()

    from jaxoip.analysis.data_views import data_views
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.data.mnist import load_mnist
    from jaxoip.models.checkpoint import load_reference_model
    from jaxoip.oip import figures
    from jaxoip.oip.scan import scan_maps
    from jaxoip.oip.scan_result import facet_images, objective_histograms
    from jaxoip.oip.search import OIPConfig
    from jaxoip.site import write_scan_site

    trained, data = load_reference_model(), load_mnist()
    maps = None if args.maps is None else list(range(args.maps))
    t0 = time.perf_counter()
    result = scan_maps(trained, "Conv2D_3", maps, args.restarts, OIPConfig(steps=args.steps), data=data, progress=False)
    scan_s = time.perf_counter() - t0
    ex = find_exemplars(trained, data, "Conv2D_3", k=3)
    patches = {int(m): ex.patches[m] for m in result.map_indices}
    facets = [f["images"] for f in facet_images(result, result.facet_threshold)]
    result.table()  # The per-map table (its measures) as write_scan_files has it before either figure.

    def best_of(fn):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery.png"
        gallery_s, _ = best_of(lambda: figures.oip_gallery(result, gallery, exemplars=patches, facets=facets))
        views_s, views = best_of(lambda: data_views(trained, data, "Conv2D_3", ex))
        site_dir = Path(args.keep) if args.keep else Path(tmp) / "site_out"

        def build():
            site_dir.mkdir(parents=True, exist_ok=True)
            return write_scan_site(result, site_dir, exemplars=ex, views=views)

        pages_s, _ = best_of(build)
        files = [site_dir / "index.html", *(p for p in (site_dir / "site").rglob("*") if p.is_file())]
        size = sum(f.stat().st_size for f in files)
    # The histograms come with the scan's own data pass (`objective_histograms` of its (images, maps) values).
    values = np.random.default_rng(0).normal(size=(len(data.test_images), len(result.data_mean)))
    hist_s, _ = best_of(lambda: objective_histograms(values))
    site_s = hist_s + views_s + pages_s
    report = {
        "maps": int(len(result.map_indices)),
        "restarts": result.restarts,
        "steps": args.steps,
        "scan_s": round(scan_s, 1),
        "gallery_s": round(gallery_s, 2),
        "site_s": round(site_s, 2),
        "data_views_s": round(views_s, 2),
        "pages_s": round(pages_s, 2),
        "histograms_s": round(hist_s, 2),
        "site_over_gallery": round(site_s / gallery_s, 2),
        "site_mb": round(size / 1e6, 2),
        "site_files": len(files),
        "backend": jax.default_backend(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "jax": jax.__version__,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
