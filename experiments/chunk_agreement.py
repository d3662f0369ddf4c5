"""How far the OIP search's results move when only the chunk size (images per compiled batch) changes.

The same maps and starts (same seed) are searched with `scan_maps(..., chunk_size=c)` for each chunk size;
XLA blocks its matmuls by batch size, so sums round differently, and the ascent amplifies the last-bit
differences. Reports, against the largest chunk size: the per-start largest pixel difference of the final
images (standardized units: max and median over starts), the relative difference of the final objective,
the maps whose best start, method or facet count changes.

    python experiments/chunk_agreement.py                                  # 16 maps x 4 starts, 600 steps
    python experiments/chunk_agreement.py --maps 16 --restarts 4 --steps 600 --chunks 1 2 8 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

import jaxoip


def run(maps: np.ndarray, restarts: int, steps: int, chunk: int, seed: int):
    """One scan of `maps` on the reference model's Conv2D_3 with `chunk` images per compiled search."""
    model = jaxoip.load_reference_model()
    cfg = jaxoip.OIPConfig(steps=steps)
    return jaxoip.scan_maps(
        model, "Conv2D_3", map_indices=maps, restarts=restarts, config=cfg, seed=seed, chunk_size=chunk, progress=False
    )


def rel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| / max(|a|, |b|), 0 where both are 0 (a start, or a map, that stayed at zero either way)."""
    scale = np.maximum(np.abs(a), np.abs(b))
    return np.divide(np.abs(a - b), scale, out=np.zeros_like(scale), where=scale > 0)


def n_facets(result) -> np.ndarray:
    return np.array([len(f.sizes) for f in result.facets()])


def compare(ref, other) -> dict:
    """Differences of `other` from `ref`, the same maps and starts searched with another chunk size."""
    pix = np.abs(other.images - ref.images).max(axis=(2, 3, 4))  # (maps, starts): largest pixel difference
    facets_ref, facets = n_facets(ref), n_facets(other)
    return {
        "pixel_max": float(pix.max()),
        "pixel_median": float(np.median(pix)),
        "objective_rel_max": float(rel_diff(other.objective, ref.objective).max()),
        "best_objective_rel_max": float(rel_diff(other.objective.max(1), ref.objective.max(1)).max()),
        "facet_count_changes": [
            {"map": int(m), "ref": int(a), "this": int(b)}
            for m, a, b in zip(ref.map_indices, facets_ref, facets)
            if a != b
        ],
        "best_start_changes": int((ref.best_start != other.best_start).sum()),
        "method_changes": int((ref.method != other.method).sum()),
        "bit_identical": bool(np.array_equal(ref.images, other.images)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", type=int, default=16, help="number of Conv2D_3 maps, spread evenly over the 128")
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 8, 64])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    maps = np.linspace(0, 127, a.maps).round().astype(int)
    results, seconds = {}, {}
    for c in sorted(a.chunks):
        t0 = time.perf_counter()
        results[c] = run(maps, a.restarts, a.steps, c, a.seed)
        seconds[c] = round(time.perf_counter() - t0, 1)
        print(f"chunk {c}: {seconds[c]} s", flush=True)
    ref_chunk = max(results)
    ref = results[ref_chunk]
    rows = {c: compare(ref, r) for c, r in results.items() if c != ref_chunk}
    # The spread over every pair of chunk sizes, not only against the reference.
    pix_all = np.stack([r.images for r in results.values()])  # (chunks, maps, starts, H, W, ch)
    spread = (pix_all.max(0) - pix_all.min(0)).max(axis=(2, 3, 4))
    objs = np.stack([r.objective for r in results.values()])  # (chunks, maps, starts)
    obj_spread = rel_diff(objs.max(0), objs.min(0))
    best_spread = rel_diff(objs.max(2).max(0), objs.max(2).min(0))
    facets = np.stack([n_facets(r) for r in results.values()])
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} x {jax.devices()[0]}",
        "cpu_model": _cpu_model(),
        "jax": jax.__version__,
        "maps": maps.tolist(),
        "restarts": a.restarts,
        "steps": a.steps,
        "precision": ref.config.precision,
        "seconds": seconds,
        "reference_chunk": ref_chunk,
        "against_reference": rows,
        "all_chunk_sizes": {
            "pixel_spread_max": float(spread.max()),
            "pixel_spread_median": float(np.median(spread)),
            "objective_rel_spread_max": float(obj_spread.max()),
            "objective_rel_spread_median": float(np.median(obj_spread)),
            "best_objective_rel_spread_max": float(best_spread.max()),
            "maps_with_facet_count_change": [int(m) for m, f in zip(maps, facets.T) if len(set(f)) > 1],
            "maps_with_method_change": [
                int(m) for m, k in zip(maps, np.stack([r.method for r in results.values()]).T) if len(set(k)) > 1
            ],
            "facets_per_map": facets.tolist(),
            "maps_not_found": [int(m) for m, f in zip(maps, ref.found) if not f],
        },
    }
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
