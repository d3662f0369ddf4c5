"""Did a change alter what XLA runs? The optimized programs of a small search, in two checkouts, compared.

Each checkout runs the same search (reference model, `Conv2D_3`, 8 maps x 2 starts, 10 steps) in a fresh
process with XLA's dump on; every program's optimized HLO is compared after dropping what names the source
(file paths, line numbers, metadata). Identical programs run at the same speed, with no timing noise: a
proof for the study's network that a refactor did not slow it, where `bench_versions.py` can only bound it.

    git worktree add ../old <commit>
    python experiments/same_programs.py --old ../old
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SEARCH = """
import numpy as np
from jaxoip.models.checkpoint import load_reference_model
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.search import OIPConfig, search_oips
m = load_reference_model()
x0 = np.asarray(initial_images(start_keys(0, list(range(8)), 2).reshape(-1), ["fine"]))
r = search_oips(m.model, "Conv2D_3", np.repeat(np.arange(8), 2), x0, OIPConfig(steps=10))
print(repr(float(r.objective.sum())))
"""


def normalized(text: str) -> str:
    """An optimized HLO module without what names the source: metadata, the file and location tables."""
    text = re.sub(r",? ?metadata=\{[^}]*\}", "", text)
    lines = [line for line in text.splitlines() if not re.match(r'^\d+ (".*"|\{.*\})$', line)]
    return re.sub(r"module_\d+", "module", "\n".join(line for line in lines if not line.startswith("HloModule")))


def programs(checkout: Path, dump: Path) -> tuple[str, dict[str, str]]:
    """(the search's objective sum, {program name: normalized optimized HLO}) of `checkout`."""
    env = dict(os.environ, PYTHONPATH=str(checkout), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_dump_to={dump} --xla_dump_hlo_as_text"
    # From the checkout: `python -c` imports from its working folder first, which must not be another checkout.
    run = dict(env=env, capture_output=True, text=True, check=True, cwd=checkout)
    out = subprocess.run([sys.executable, "-c", SEARCH], **run).stdout
    found = {}
    for f in sorted(dump.glob("*after_optimizations.txt")):  # In compile order; a name may repeat.
        name = re.sub(r"^module_\d+\.|\.cpu_after_optimizations\.txt$", "", f.name)
        found[f"{name}#{sum(k.startswith(name + '#') for k in found)}"] = normalized(f.read_text())
    return out.strip(), found


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the other checkout (e.g. a git worktree of the old commit)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_value, old = programs(Path(args.old).resolve(), Path(tmp) / "old")
        new_value, new = programs(HERE, Path(tmp) / "new")
    differ = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    report = {
        "programs": len(new),
        "differ": differ,
        "same_result": old_value == new_value,
        "objective_sum": {"old": old_value, "new": new_value},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
