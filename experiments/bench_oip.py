"""OIP search throughput: the study's way (one map, one start, a Python loop over steps) vs the batched sweep.

Both run in one process on the same model, layer and number of steps; the figures are image-steps per
second after compilation, and their ratio.

    python experiments/bench_oip.py                 # quick: 100 steps, 128 maps x 8 starts batched
    python experiments/bench_oip.py --steps 600 --restarts 16 --full   # the default scan on an accelerator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxoip.checkpoint import resolve_model
from jaxoip.model import layer_output
from jaxoip.noise import initial_images, standardize_image, start_keys
from jaxoip.oip import OIPConfig, default_chunk_size, search_oips


def study_step_fn(model, layer_name: str, map_index: int, epsilon: float):
    """One jitted gradient-ascent step for one image and one map, as the study ran it in eager mode."""
    graphdef, params = nnx.split(model)

    def objective(x):
        return layer_output(graphdef, params, x, layer_name)[0, ..., map_index].mean()

    @jax.jit
    def step(x):
        value, g = jax.value_and_grad(objective)(x)
        g = g / (jnp.sqrt(jnp.mean(g**2)) + 1e-5)
        return standardize_image(x + epsilon * g), value

    return step


def bench_study_way(model, layer_name, maps, x0, steps, epsilon) -> float:
    """Image-steps per second of a Python loop over steps, one (map, start) at a time (compile excluded)."""
    fns = {m: study_step_fn(model, layer_name, int(m), epsilon) for m in set(maps.tolist())}
    for m, f in fns.items():  # Compile outside the timing.
        jax.block_until_ready(f(jnp.asarray(x0[:1])))
    t0 = time.perf_counter()
    for m, x in zip(maps, x0):
        x = jnp.asarray(x[None])
        for _ in range(steps):
            x, value = fns[int(m)](x)
            value.block_until_ready()  # The study read the loss back every step.
    return len(maps) * steps / (time.perf_counter() - t0)


def bench_batched(model, layer_name, maps, x0, cfg, chunk_size=None) -> tuple[float, float]:
    """(image-steps per second, seconds) of the batched search, after a compiling warm-up call."""
    warm = min(len(maps), chunk_size or default_chunk_size())  # One full chunk compiles the program.
    search_oips(model, layer_name, maps[:warm], x0[:warm], cfg, chunk_size=chunk_size)
    t0 = time.perf_counter()
    res = search_oips(model, layer_name, maps, x0, cfg, chunk_size=chunk_size)
    dt = time.perf_counter() - t0
    return len(maps) * res.steps_run / dt, dt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the reference model)")
    p.add_argument("--layer", default="Conv2D_3")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--maps", type=int, default=128, help="maps in the batched sweep")
    p.add_argument("--restarts", type=int, default=8, help="starts per map in the batched sweep")
    p.add_argument("--study-images", type=int, default=8, help="(map, start) pairs timed the study's way")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--full", action="store_true", help="also time the full default scan: 128 maps x 16 x 600 steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    model = resolve_model(args.model).model
    cfg = OIPConfig(steps=args.steps)
    maps = np.repeat(np.arange(args.maps), args.restarts)
    x0 = np.asarray(initial_images(start_keys(args.seed, np.arange(args.maps), args.restarts).reshape(-1), ["study"]))
    pick = np.linspace(0, len(maps) - 1, args.study_images).astype(int)

    study = bench_study_way(model, args.layer, maps[pick], x0[pick], args.steps, cfg.epsilon)
    batched, seconds = bench_batched(model, args.layer, maps, x0, cfg, args.chunk_size)
    chunk = args.chunk_size or default_chunk_size()
    dev = jax.devices()[0]
    report = {
        "device": f"{len(jax.devices())} x {dev.device_kind} ({dev.platform})",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "layer": args.layer,
        "steps": args.steps,
        "study_way_images": len(pick),
        "study_way_image_steps_per_s": round(study, 1),
        "batched_images": len(maps),
        "chunk_size": chunk,
        "batched_image_steps_per_s": round(batched, 1),
        "batched_seconds": round(seconds, 2),
        "ratio": round(batched / study, 1),
    }
    if args.full:
        full_cfg = OIPConfig(steps=600)
        fmaps = np.repeat(np.arange(128), 16)
        fx0 = np.asarray(initial_images(start_keys(args.seed, np.arange(128), 16).reshape(-1), ["study"]))
        rate, secs = bench_batched(model, args.layer, fmaps, fx0, full_cfg, args.chunk_size)
        report.update(full_scan_seconds=round(secs, 2), full_scan_image_steps_per_s=round(rate, 1),
                      full_scan_ratio_vs_study_way=round(rate / study, 1))
    print(f"study way (1 map, 1 start, Python loop over jitted steps): {study:10.1f} image-steps/s")
    print(f"batched sweep ({len(maps)} images, chunks of {chunk}, one compiled program): {batched:10.1f} image-steps/s")
    print(f"ratio: {batched / study:.1f}x   on {report['device']}")
    if args.full:
        print(f"full default scan 128 maps x 16 starts x 600 steps: {report['full_scan_seconds']} s after compilation")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
