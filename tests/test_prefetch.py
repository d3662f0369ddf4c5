"""The writers' work done ahead on a thread of its own (`jaxoip._prefetch`), while a scan's data pass runs."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_prefetch_also_compiles_the_site_templates_and_builds_the_mathtext_grammar():
    """After the imports, the thread compiles a scan site's templates and matplotlib's mathtext grammar (the
    strips' log-axis labels): the main thread, which waits for it before drawing, finds both made."""
    code = """
from jaxoip._prefetch import prefetch_imports, wait_prefetched
prefetch_imports()
wait_prefetched()
from matplotlib.mathtext import MathTextParser
from jaxoip.site.render import SCAN_TEMPLATES, environment
cached = {t.name for t in environment().cache.values()}
print(MathTextParser._parser is not None, set(SCAN_TEMPLATES) <= cached)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
