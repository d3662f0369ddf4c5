"""The same `scan_all_maps` on 1 x 4, 2 x 2 and 4 x 1 (processes x CPU devices), in one run.

Every layout has 4 devices in all (CPU devices through JAX_NUM_CPU_DEVICES, Gloo collectives between the
processes on localhost), so the difference to 1 x 4 is the cost of more processes: their startup, the
joining, the settings check, the phases every process repeats and the exchange of the results. Each
layout runs twice with one compilation cache (the first run fills it); the second is reported. The
oips.npz arrays of every layout are checked equal to 1 x 4's, bit for bit.

On a machine with fewer cores than processes x devices this measures coordination overhead, not speedup.

    python experiments/bench_distributed.py
    python experiments/bench_distributed.py --args "--maps 0-7 --restarts 2 --steps 20" --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUTS = ((1, 4), (2, 2), (4, 1))
DEFAULT_ARGS = "--maps 0-15 --restarts 4 --steps 100 --chunk-size 4 --exemplars 0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_layout(processes: int, devices: int, extra: list[str], cache: Path, out: Path) -> dict:
    """Wall time of one run of the scan on `processes` x `devices`, and process 0's summary."""
    env = {**os.environ, "JAXOIP_CACHE_DIR": str(cache), "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    cmd = [sys.executable, "-m", "jaxoip", "scan_all_maps", *extra, "--no-progress", "--overwrite"]
    t0 = time.perf_counter()
    procs = []
    for i in range(processes):
        join = ["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(i)]
        procs.append(
            subprocess.Popen(
                [*cmd, "--out", str(out), *(join if processes > 1 else [])],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    for p, (_, err) in zip(procs, results):
        if p.returncode != 0:
            raise SystemExit(f"{processes} x {devices} failed ({p.returncode}): {err.strip().splitlines()[-1:]}")
    s = json.loads((out / "summary.json").read_text())
    return {
        "wall_seconds": round(wall, 2),
        "command_seconds": s["command_seconds"],
        "search_seconds": s["search_seconds"],
        "phase_seconds": s["phase_seconds"],
        "devices": s["devices"],
        "processes": s.get("processes", 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--args", default=DEFAULT_ARGS, help="scan_all_maps options of the scan")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    extra = shlex.split(args.args)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for processes, devices in LAYOUTS:
            name = f"{processes}x{devices}"
            cache, out = tmp / f"cache-{name}", tmp / name
            run_layout(processes, devices, extra, cache, out)  # Fills the compilation cache.
            rows[name] = run_layout(processes, devices, extra, cache, out)
            arrays = np.load(out / "oips.npz")
            base = np.load(tmp / "1x4" / "oips.npz")
            rows[name]["same_bits_as_1x4"] = all(np.array_equal(arrays[k], base[k]) for k in base.files)
    base = rows["1x4"]["wall_seconds"]
    for row in rows.values():
        row["overhead_vs_1x4"] = round(row["wall_seconds"] / base - 1, 3)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "scan": args.args,
        "layouts": rows,
    }
    print(f"{'layout':>7} {'wall s':>7} {'command s':>9} {'search s':>8} {'overhead':>8} same bits")
    for name, r in rows.items():
        print(
            f"{name:>7} {r['wall_seconds']:7.1f} {r['command_seconds']:9.1f} {r['search_seconds']:8.1f} "
            f"{r['overhead_vs_1x4']:+8.0%} {r['same_bits_as_1x4']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
