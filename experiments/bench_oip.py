"""OIP search throughput, side by side in one process on the same model, layer, starts and steps.

Rows (image-steps per second after compilation, and each row's ratio to the study's way):
- the study's way: one map, one start, a Python loop over jitted steps;
- the batched sweep (`search_oips`) at each precision: highest, tf32, bf16;
- PyTorch, the same update written plainly (batched, and eager one image at a time), float32 with TF32
  off, on the same device, when torch is installed (otherwise the rows say "not measured").

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

from jaxoip.models.checkpoint import resolve_model
from jaxoip.models.cnn import layer_output
from jaxoip.oip.noise import initial_images, standardize_image, start_keys
from jaxoip.oip.search import OIPConfig, default_chunk_size, search_oips


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
    for f in fns.values():  # Compile outside the timing.
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


def torch_search(model, maps, x0, steps, epsilon, batch: int | None):
    """Image-steps/s of the same search in PyTorch (float32, TF32 off): `batch` images at a time, or eager one
    by one (batch None). The last conv computes only each image's selected map, as jaxoip's search does."""
    import torch
    import torch.nn.functional as F

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _, params = nnx.split(model)

    def t(a):
        return torch.tensor(np.asarray(a), device=dev)

    w1, b1 = t(params["Conv2D_1"]["kernel"][...]).permute(3, 2, 0, 1), t(params["Conv2D_1"]["bias"][...])
    w2, b2 = t(params["Conv2D_2"]["kernel"][...]).permute(3, 2, 0, 1), t(params["Conv2D_2"]["bias"][...])
    w3 = t(params["Conv2D_3"]["kernel"][...]).permute(3, 2, 0, 1).reshape(128, -1)  # (C, C_in*9) as unfold
    b3 = t(params["Conv2D_3"]["bias"][...])

    def objective(x, m):
        h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w2, b2)), 2)
        cols = F.unfold(h, 3)  # (N, C_in*9, 9)
        out = torch.einsum("nkp,nk->np", cols, w3[m]) + b3[m][:, None]
        return F.relu(out).mean(dim=1)

    def run(x, m):
        x = x.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            obj = objective(x, m)
            (g,) = torch.autograd.grad(obj.sum(), x)
            with torch.no_grad():
                g = g / (g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
                x = x + epsilon * g
                mu = x.mean(dim=(1, 2, 3), keepdim=True)
                x = (x - mu) / (x.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-8)
            x = x.detach()
        return x

    xs = t(x0).permute(0, 3, 1, 2).contiguous()
    ms = torch.tensor(np.asarray(maps), device=dev, dtype=torch.long)
    size = batch or 1
    run(xs[:size], ms[:size])  # Warm-up.
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for lo in range(0, len(maps), size):
        run(xs[lo : lo + size], ms[lo : lo + size])
    if dev == "cuda":
        torch.cuda.synchronize()
    return len(maps) * steps / (time.perf_counter() - t0)


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
    p.add_argument("--precisions", default="highest,tf32,bf16", help="batched rows to time (default: %(default)s)")
    p.add_argument("--torch-images", type=int, default=8, help="(map, start) pairs timed with eager PyTorch")
    args = p.parse_args()

    model = resolve_model(args.model).model
    cfg = OIPConfig(steps=args.steps)
    maps = np.repeat(np.arange(args.maps), args.restarts)
    x0 = np.asarray(initial_images(start_keys(args.seed, np.arange(args.maps), args.restarts).reshape(-1), ["study"]))
    pick = np.linspace(0, len(maps) - 1, args.study_images).astype(int)

    study = bench_study_way(model, args.layer, maps[pick], x0[pick], args.steps, cfg.epsilon)
    rates = {}
    for precision in args.precisions.split(","):
        rates[precision], _ = bench_batched(
            model, args.layer, maps, x0, OIPConfig(steps=args.steps, precision=precision), args.chunk_size
        )
    chunk = args.chunk_size or default_chunk_size()
    try:
        import torch  # noqa: F401

        tpick = np.linspace(0, len(maps) - 1, args.torch_images).astype(int)
        torch_rates = {
            "torch_batched": torch_search(model, maps, x0, args.steps, cfg.epsilon, chunk),
            "torch_eager": torch_search(model, maps[tpick], x0[tpick], args.steps, cfg.epsilon, None),
        }
    except ImportError:
        torch_rates = {"torch_batched": None, "torch_eager": None}
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
        "batched_image_steps_per_s": {k: round(v, 1) for k, v in rates.items()},
        "torch_image_steps_per_s": {
            k: (round(v, 1) if v else "not measured: torch not installed") for k, v in torch_rates.items()
        },
        "ratio_vs_study_way": {k: round(v / study, 2) for k, v in {**rates, **torch_rates}.items() if v},
    }
    if torch_rates["torch_batched"]:
        report["ratio_vs_torch_batched"] = {k: round(v / torch_rates["torch_batched"], 2) for k, v in rates.items()}
    if args.full:
        full_cfg = OIPConfig(steps=600)
        fmaps = np.repeat(np.arange(128), 16)
        fx0 = np.asarray(initial_images(start_keys(args.seed, np.arange(128), 16).reshape(-1), ["study"]))
        rate, secs = bench_batched(model, args.layer, fmaps, fx0, full_cfg, args.chunk_size)
        report.update(
            full_scan_seconds=round(secs, 2),
            full_scan_image_steps_per_s=round(rate, 1),
            full_scan_ratio_vs_study_way=round(rate / study, 1),
        )
    print(f"on {report['device']}, {args.steps} steps; image-steps/s and ratio to the study's way:")
    print(f"  study way (1 map, 1 start, Python loop over jitted steps): {study:12.1f}  1.00x")
    for k, v in rates.items():
        print(f"  batched sweep, {k:7s} ({len(maps)} images, chunks of {chunk}): {v:12.1f}  {v / study:.2f}x")
    for k, v in torch_rates.items():
        print(f"  {k:13s}: " + (f"{v:12.1f}  {v / study:.2f}x" if v else "not measured (torch not installed)"))
    if args.full:
        print(f"full default scan 128 maps x 16 starts x 600 steps: {report['full_scan_seconds']} s after compilation")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
