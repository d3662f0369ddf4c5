"""The fixed cost around the search (issue 28): a tiny scan's whole process against "Python starts JAX and runs one op".

Each round runs, each in a fresh process: the yardstick (`import jax; jnp.ones(3).sum()`), then for this
checkout and (with `--old`) another checkout: the tiny scan warm (its own compilation cache, filled by an earlier
run), the tiny scan cold (`--no-cache`), and a mistyped `--layer`. Medians over rounds; the ratios to the
yardstick are taken round by round, so a machine that slows down between rounds does not bias them. The scans'
`summary.json` phase times are kept as well (medians). The processes run with Python's bytecode written and
reused (PYTHONDONTWRITEBYTECODE removed from their environment), as an installed jaxoip runs.

    git worktree add ../old <commit>
    python experiments/bench_fixed_cost.py --old ../old --rounds 5 --json fixed_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SCAN = ["scan_all_maps", "--maps", "0-7", "--restarts", "2", "--steps", "100", "--no-progress"]
YARDSTICK = "import jax, jax.numpy as jnp; jnp.ones(3).sum().block_until_ready()"


def timed(argv: list[str], cwd: Path, env: dict, ok: bool = True) -> float:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if (p.returncode == 0) != ok:
        sys.exit(f"error: {' '.join(argv)} in {cwd} exited {p.returncode}:\n{p.stderr[-2000:]}")
    return wall


def phases(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    return {"command_seconds": s["command_seconds"], **s.get("phase_seconds", {})}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=None, help="another checkout to measure beside this one")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-dir", default=os.environ.get("JAXOIP_DATA_DIR"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not args.data_dir:
        sys.exit("error: give --data-dir or set JAXOIP_DATA_DIR (the tiny scan's data pass needs MNIST)")
    checkouts = {"this": HERE, **({"old": Path(args.old).resolve()} if args.old else {})}
    rows: dict[str, list[float]] = {}
    detail: dict[str, list[dict]] = {}

    def add(name, value):
        rows.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="fixed_cost_") as tmp:
        tmp = Path(tmp)
        # As installed: Python writes and reuses the bytecode of jaxoip's modules, as `pip install` (which compiles
        # it) and any environment without PYTHONDONTWRITEBYTECODE do; with it set, every process compiles jaxoip's
        # ~60 modules from source again (about 0.1 s). The yardstick runs in the same environment.
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        envs = {}
        for name, root in checkouts.items():
            envs[name] = {**base, "PYTHONPATH": str(root), "JAXOIP_DATA_DIR": args.data_dir,
                          "JAXOIP_CACHE_DIR": str(tmp / f"cache-{name}")}  # fmt: skip
            timed(["-m", "jaxoip", *SCAN, "--out", str(tmp / f"warmup-{name}")], root, envs[name])  # fills its cache
        for r in range(args.rounds):
            yard = timed(["-c", YARDSTICK], tmp, base)
            add("yardstick", yard)
            for name, root in checkouts.items():
                env = envs[name]
                for kind, extra in (("warm", []), ("cold", ["--no-cache"])):
                    out = tmp / f"{name}-{kind}-{r}"
                    wall = timed(["-m", "jaxoip", *SCAN, *extra, "--out", str(out)], root, env)
                    add(f"{name} {kind}", wall)
                    add(f"{name} {kind} / yardstick", wall / yard)
                    detail.setdefault(f"{name} {kind}", []).append(phases(out))
                wall = timed(["-m", "jaxoip", "scan_all_maps", "--layer", "Conv2D_9"], root, env, ok=False)
                add(f"{name} mistyped --layer", wall)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    phase_med = {k: {p: statistics.median(d.get(p, 0.0) for d in ds) for p in ds[0]} for k, ds in detail.items()}
    print(f"\nmedians over {args.rounds} rounds ({platform.machine()}, {os.cpu_count()} cores):")
    for k, v in med.items():
        print(f"  {k:32s} {v:8.2f}")
    for k, ph in phase_med.items():
        print(f"  {k}: " + ", ".join(f"{p} {s:.2f}" for p, s in ph.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rounds=rows, medians=med, phases=phase_med), indent=1))


if __name__ == "__main__":
    main()
