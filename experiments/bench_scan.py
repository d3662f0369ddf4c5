"""The whole `python -m jaxoip scan_all_maps` from a fresh process: a cold and a warm compilation cache.

Each run is a new Python process (imports, model and data loading, every phase, figures). The cold run
starts from an empty cache folder; the warm runs reuse it. Reports wall time, the command's own time per
phase (from its summary.json), programs compiled and loaded from the cache, and the warm/cold ratio.

    python experiments/bench_scan.py                          # the default scan, 1 cold + 2 warm runs
    python experiments/bench_scan.py --args "--maps 0-7 --restarts 2 --steps 50"   # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_scan(extra: list[str], cache: Path, out: Path) -> dict:
    env = {**os.environ, "JAXOIP_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "jaxoip", "scan_all_maps", *extra, "--no-progress", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    s = json.loads((out / "summary.json").read_text())
    return {
        "wall_seconds": round(wall, 2),
        "command_seconds": s["command_seconds"],
        "search_seconds": s["search_seconds"],
        "phase_seconds": s["phase_seconds"],
        "compiled_programs": s["compiled_programs"],
        "cached_programs": s["cached_programs"],
        "image_steps_per_second": s["image_steps_per_second"],
        "backend": s["backend"],
        "precision": s["precision"],
        "maps_found": s.get("found"),
        "maps_woken": s.get("woken"),
        "quality": s.get("quality"),  # The per-map measures' distributions (issue 16).
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", default="", help="arguments for scan_all_maps (default: none, the default scan)")
    p.add_argument("--warm-runs", type=int, default=2)
    a = p.parse_args()
    extra = shlex.split(a.args)
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        tmp = Path(tmp)
        runs = [dict(run_scan(extra, tmp / "cache", tmp / "cold"), cache="cold")]
        for i in range(a.warm_runs):
            runs.append(dict(run_scan(extra, tmp / "cache", tmp / f"warm{i}"), cache="warm"))
    cold = runs[0]
    warm = min((r for r in runs[1:]), key=lambda r: r["wall_seconds"]) if a.warm_runs else None
    print(f"scan_all_maps {a.args or '(defaults)'} on {platform.machine()}, {os.cpu_count()} cores, {cold['backend']}")
    print("run   wall s  command s  search s  compiled  cached  phases (s)")
    for r in runs:
        print(
            f"{r['cache']:5s} {r['wall_seconds']:7.1f} {r['command_seconds']:9.1f} {r['search_seconds']:9.1f}"
            f" {r['compiled_programs']:9d} {r['cached_programs']:7d}  {r['phase_seconds']}"
        )
    report = {"args": a.args, "runs": runs}
    if warm:
        report["warm_over_cold_wall"] = round(warm["wall_seconds"] / cold["wall_seconds"], 2)
        report["warm_wall_over_search"] = round(warm["wall_seconds"] / warm["search_seconds"], 2)
        print(
            f"warm / cold wall: {report['warm_over_cold_wall']}; warm wall / search: {report['warm_wall_over_search']}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
