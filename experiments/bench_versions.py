"""Did a change slow the search? `bench_oip.py` of two checkouts, alternated in one run on one machine.

Each round runs this checkout's `experiments/bench_oip.py` and the other checkout's, each in a fresh process
with its own code first on the path, and reads the batched sweep's image-steps per second at `highest`. The
ratio new / old is the median over rounds of each round's ratio, so drift in the machine's load cancels.

    git worktree add ../old <commit>
    python experiments/bench_versions.py --old ../old --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def rate(checkout: Path, bench_args: list[str]) -> float:
    """The batched `highest` image-steps per second of `checkout`'s bench_oip.py."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, str(checkout / "experiments" / "bench_oip.py"), *bench_args]
    out = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return float(report["batched_image_steps_per_s"]["highest"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the other checkout (e.g. a git worktree of the old commit)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--args", default="--maps 32 --restarts 8 --steps 100 --precisions highest --torch-images 0")
    args = p.parse_args()
    bench_args = args.args.split()
    old, new = [], []
    for r in range(args.rounds):
        old.append(rate(Path(args.old).resolve(), bench_args))
        new.append(rate(HERE, bench_args))
        print(f"round {r + 1}: old {old[-1]:.1f}, new {new[-1]:.1f} image-steps/s, new/old {new[-1] / old[-1]:.3f}")
    ratio = statistics.median(n / o for n, o in zip(new, old))
    print(json.dumps({"old": old, "new": new, "median_ratio_new_over_old": round(ratio, 3), "args": args.args}))


if __name__ == "__main__":
    main()
