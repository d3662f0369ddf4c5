"""OIP toolkit throughput: `--style robust`, a diversity search, the Fourier parameterization and the
wake-up against the study's plain ascent, in one run on the same maps, starts and steps.

Each configuration is compiled by a warm-up call on one chunk first, then timed over all images;
figures are image-steps per second and the ratio to plain ascent.

    python experiments/bench_toolkit.py                  # 32 maps x 8 starts x 100 steps of Conv2D_3
    python experiments/bench_toolkit.py --maps 128 --steps 600
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from jaxoip.models.checkpoint import resolve_model
from jaxoip.oip.config import ObjectiveConfig
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.search import OIPConfig, SearchSetup, default_chunk_size, search_oips
from jaxoip.oip.transforms import style_config


def configs(steps: int, restarts: int) -> dict[str, tuple[OIPConfig, ObjectiveConfig, SearchSetup]]:
    plain, wake, setup = ObjectiveConfig(wake=False), ObjectiveConfig(wake=True), SearchSetup()
    return {
        "plain (study)": (OIPConfig(steps=steps), plain, setup),
        "wake": (OIPConfig(steps=steps), wake, setup),
        "robust": (style_config("robust", steps=steps), plain, setup),
        "fourier": (OIPConfig(steps=steps, param="fourier"), plain, setup),
        "diversity 1.0": (OIPConfig(steps=steps, diversity=1.0), plain, SearchSetup(group=restarts)),
    }


def bench(model, layer, maps, x0, settings, chunk) -> tuple[float, float, float]:
    """(image-steps per second, seconds, fraction of images with a positive objective), compile excluded."""
    cfg, options, setup = settings
    search_oips(model, layer, maps[:chunk], x0[:chunk], cfg, chunk_size=chunk, options=options, setup=setup)
    t0 = time.perf_counter()
    res = search_oips(model, layer, maps, x0, cfg, chunk_size=chunk, options=options, setup=setup)
    dt = time.perf_counter() - t0
    return len(maps) * res.steps_run / dt, dt, float((res.objective > 0).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the reference model)")
    p.add_argument("--layer", default="Conv2D_3")
    p.add_argument("--maps", type=int, default=32)
    p.add_argument("--restarts", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args()

    trained = resolve_model(args.model)
    maps = np.arange(args.maps)
    x0 = np.asarray(initial_images(start_keys(args.seed, maps, args.restarts).reshape(-1), ["study"]))
    flat_maps = np.repeat(maps, args.restarts)
    # A chunk holds whole groups of a map's starts (needed by the diversity term), the same for all.
    chunk = max(1, default_chunk_size() // args.restarts) * args.restarts
    rows = {}
    for name, cfg in configs(args.steps, args.restarts).items():
        rate, dt, found = bench(trained.model, args.layer, flat_maps, x0, cfg, chunk)
        rows[name] = dict(image_steps_per_second=round(rate, 1), seconds=round(dt, 2), frac_positive=round(found, 3))
    base = rows["plain (study)"]["image_steps_per_second"]
    for r in rows.values():
        r["relative_to_plain"] = round(r["image_steps_per_second"] / base, 3)
    meta = dict(
        layer=args.layer,
        maps=args.maps,
        restarts=args.restarts,
        steps=args.steps,
        chunk=chunk,
        backend=jax.default_backend(),
        devices=len(jax.devices()),
        cpus=os.cpu_count(),
        machine=platform.machine(),
    )
    print(json.dumps(meta))
    print(f"{'search':<16}{'image-steps/s':>15}{'seconds':>10}{'vs plain':>10}{'positive':>10}")
    for name, r in rows.items():
        print(
            f"{name:<16}{r['image_steps_per_second']:>15.1f}{r['seconds']:>10.2f}"
            f"{r['relative_to_plain']:>10.2f}{r['frac_positive']:>10.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
