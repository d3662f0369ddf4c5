"""OIP search throughput on a CIFAR-sized colour CNN: jaxoip's `search_oips` against PyTorch, side by side.

The model (random weights, batch-normalization statistics and biases drawn from the seed too) is

    32x32x3 -> conv 32 same -> BN -> ReLU -> maxpool 2 -> conv 64 same -> BN -> ReLU -> maxpool 2
            -> conv 128 same -> BN -> ReLU -> GAP -> dense 10 (softmax)

and the target is the last convolution, `c3` (its linear output, before BN and ReLU): every map x a few
starts x a fixed number of steps of the study's plain ascent (RMS-normalized gradient, step 0.01,
re-standardized image; wake-up off). jaxoip runs at precision "highest"; PyTorch runs the same update
written plainly in float32 with TF32 off, on the same weights (copied over), batched in the same chunks,
its last convolution computing only each image's selected map as jaxoip's search does.

First both sides run a few steps from the same starts and their objectives after every step are compared
(so the timing compares equal work); then they are timed in alternating rounds, compilation and warm-up
excluded, and the medians and their ratio reported. The ratio is the measure: absolute figures depend on
the machine and on what else runs on it.

    python experiments/bench_colour.py                       # quick: 128 maps x 2 starts x 20 steps, 3 rounds
    python experiments/bench_colour.py --restarts 8 --steps 200 --rounds 5   # larger
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxoip.models.cnn import BatchNorm, LayerSpec, ModelConfig, init_model
from jaxoip.oip.config import ObjectiveConfig
from jaxoip.oip.noise import standardize_image, start_keys
from jaxoip.oip.search import OIPConfig, default_chunk_size, search_oips

LAYER = "c3"
PLAIN = ObjectiveConfig(wake=False)  # The study's plain ascent, as the torch side runs it.
CONFIG = ModelConfig(
    input_shape=(32, 32, 3),
    layers=(
        LayerSpec("c1", "conv", 32, 3, "linear", padding="same"),
        LayerSpec("bn1", "batchnorm"),
        LayerSpec("r1", "activation", activation="relu"),
        LayerSpec("p1", "pool", 2),
        LayerSpec("c2", "conv", 64, 3, "linear", padding="same"),
        LayerSpec("bn2", "batchnorm"),
        LayerSpec("r2", "activation", activation="relu"),
        LayerSpec("p2", "pool", 2),
        LayerSpec("c3", "conv", 128, 3, "linear", padding="same"),
        LayerSpec("bn3", "batchnorm"),
        LayerSpec("r3", "activation", activation="relu"),
        LayerSpec("gap", "gap"),
        LayerSpec("logits", "dense", 10, activation="softmax"),
    ),
)


def colour_model(seed: int):
    """The colour CNN with random weights: Glorot kernels, and random conv biases and batch-normalization
    scale, shift and statistics (the defaults would make BN an identity and test nothing of the copy)."""
    model = init_model(CONFIG, seed)
    rng = np.random.default_rng(seed)
    for s in CONFIG.layers:
        module = getattr(model, s.name, None)
        if s.kind == "conv":
            module.bias[...] = jnp.asarray(rng.normal(0.0, 0.1, s.size), jnp.float32)
        elif isinstance(module, BatchNorm):
            c = module.scale[...].shape[0]
            module.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
            module.bias[...] = jnp.asarray(rng.normal(0.0, 0.1, c), jnp.float32)
            module.mean[...] = jnp.asarray(rng.normal(0.0, 0.1, c), jnp.float32)
            module.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    return model


@jax.jit
def _colour_starts(keys):
    return jax.vmap(lambda k: standardize_image(jax.random.uniform(k, CONFIG.input_shape, jnp.float32)))(keys)


def colour_starts(seed: int, maps: int, restarts: int) -> np.ndarray:
    """Standardized uniform-noise colour starts (maps*restarts, 32, 32, 3), start r of map m from its own key."""
    return np.asarray(_colour_starts(start_keys(seed, np.arange(maps), restarts).reshape(-1)))


class TorchSearch:
    """The same search in PyTorch (NCHW, float32, TF32 off) on the jaxoip model's weights."""

    def __init__(self, model, epsilon: float, grad_eps: float):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.torch = torch
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.epsilon, self.grad_eps = epsilon, grad_eps
        _, state = nnx.split(model)

        def t(a):
            return torch.tensor(np.asarray(a), device=self.dev, dtype=torch.float32)

        self.conv = {
            n: (t(state[n]["kernel"][...]).permute(3, 2, 0, 1), t(state[n]["bias"][...])) for n in ("c1", "c2")
        }
        w3 = t(state["c3"]["kernel"][...]).permute(3, 2, 0, 1)
        self.w3 = w3.reshape(w3.shape[0], -1)  # (C, C_in*9), the order of F.unfold's columns
        self.b3 = t(state["c3"]["bias"][...])
        self.bn = {
            n: tuple(t(state[n][k][...]) for k in ("mean", "var", "scale", "bias")) + (getattr(model, n).epsilon,)
            for n in ("bn1", "bn2")
        }

    def objective(self, x, m):
        """Mean of map m[i] of the last convolution for image i: (N,)."""
        F = self.torch.nn.functional
        h = x
        for c, bn in (("c1", "bn1"), ("c2", "bn2")):
            w, b = self.conv[c]
            mean, var, scale, shift, eps = self.bn[bn]
            h = F.conv2d(h, w, b, padding=1)  # 'same' for a 3x3 kernel at stride 1
            h = F.max_pool2d(F.relu(F.batch_norm(h, mean, var, scale, shift, training=False, eps=eps)), 2)
        cols = F.unfold(h, 3, padding=1)  # (N, C_in*9, H*W)
        out = self.torch.einsum("nkp,nk->np", cols, self.w3[m]) + self.b3[m][:, None]
        return out.mean(dim=1)

    def run(self, x, m, steps: int, trace: bool = True):
        """(final images, objectives after each step (N, steps), or None without `trace`) of `steps` ascent
        steps: one forward and backward pass each (plus one forward pass for the trace)."""
        torch = self.torch
        values = []
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.objective(x, m).sum(), x)
            with torch.no_grad():
                g = g / (g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + self.grad_eps)
                x = x + self.epsilon * g
                mu = x.mean(dim=(1, 2, 3), keepdim=True)
                x = (x - mu) / (x.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-8)
                if trace:
                    values.append(self.objective(x, m))
        return x.detach(), (torch.stack(values, dim=1) if trace else None)

    def inputs(self, x0, maps):
        torch = self.torch
        xs = torch.tensor(np.asarray(x0), device=self.dev).permute(0, 3, 1, 2).contiguous()
        return xs, torch.tensor(np.asarray(maps), device=self.dev, dtype=torch.long)

    def sync(self):
        if self.dev == "cuda":
            self.torch.cuda.synchronize()


def torch_timed_search(ts: TorchSearch, xs, ms, steps: int, chunk: int) -> float:
    """Seconds of the PyTorch search over all images, in chunks as jaxoip cuts them (no trace kept)."""
    ts.sync()
    t0 = time.perf_counter()
    for lo in range(0, xs.shape[0], chunk):
        ts.run(xs[lo : lo + chunk], ms[lo : lo + chunk], steps, trace=False)
    ts.sync()
    return time.perf_counter() - t0


def jax_timed_search(model, maps, x0, cfg: OIPConfig, chunk: int) -> float:
    """Seconds of `search_oips` over all images (programs already compiled)."""
    t0 = time.perf_counter()
    search_oips(model, LAYER, maps, x0, cfg, chunk_size=chunk, options=PLAIN)
    return time.perf_counter() - t0


def agreement(model, ts: TorchSearch, maps, x0, steps: int, cfg: OIPConfig) -> dict:
    """Objectives after each of `steps` steps from the same starts, jaxoip against PyTorch: the largest relative
    difference (over images and steps, relative to the objective's largest magnitude per image) and of the
    final images."""
    res = search_oips(model, LAYER, maps, x0, dataclasses.replace(cfg, steps=steps), options=PLAIN)
    xt, trace = ts.run(*ts.inputs(x0, maps), steps)
    tj, tt = res.traces, trace.cpu().numpy()
    scale = np.maximum(np.abs(tj).max(axis=1, keepdims=True), 1e-12)
    rel = np.abs(tj - tt) / scale
    images = np.abs(res.images - xt.permute(0, 2, 3, 1).cpu().numpy()).max()
    return {
        "images": len(maps),
        "steps": steps,
        "max_rel_objective_diff": float(rel.max()),
        "max_rel_objective_diff_by_step": [float(v) for v in rel.max(axis=0)],
        "max_abs_image_diff": float(images),
        "jax_objectives_first_image": [float(v) for v in tj[0]],
        "torch_objectives_first_image": [float(v) for v in tt[0]],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", type=int, default=128, help="maps of c3 searched, 0..maps-1 (default: all %(default)s)")
    p.add_argument("--restarts", type=int, default=2, help="starts per map (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="ascent steps timed (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per side (default: %(default)s)")
    p.add_argument("--chunk-size", type=int, default=None, help="images per batch on both sides (default: jaxoip's)")
    p.add_argument("--check-images", type=int, default=8, help="starts in the agreement check (default: %(default)s)")
    p.add_argument("--check-steps", type=int, default=5, help="steps in the agreement check (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="agreement required, relative (default: %(default)s)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="PyTorch's intra-op threads (default: its own, one per core; on a loaded machine its OpenMP threads "
        "can stall each other, see BENCHMARKS.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("maps", "restarts", "steps", "rounds", "check_images", "check_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.maps > 128:
        p.error("--maps is at most 128 (c3 has 128 maps)")
    for name in ("chunk_size", "torch_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        import torch
    except ImportError:
        p.error("PyTorch is needed for this comparison: pip install torch")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    load_before = os.getloadavg()
    model = colour_model(args.seed)
    cfg = OIPConfig(steps=args.steps, precision="highest")
    maps = np.repeat(np.arange(args.maps), args.restarts)
    x0 = colour_starts(args.seed, args.maps, args.restarts)
    chunk = args.chunk_size or default_chunk_size()
    ts = TorchSearch(model, cfg.epsilon, cfg.grad_eps)

    pick = np.linspace(0, len(maps) - 1, min(args.check_images, len(maps))).astype(int)
    check = agreement(model, ts, maps[pick], x0[pick], args.check_steps, cfg)
    ok = check["max_rel_objective_diff"] <= args.tolerance
    print(
        f"agreement, {len(pick)} starts x {args.check_steps} steps: objectives differ by at most "
        f"{check['max_rel_objective_diff']:.2e} relative (by step: "
        + ", ".join(f"{v:.1e}" for v in check["max_rel_objective_diff_by_step"])
        + f"); images by {check['max_abs_image_diff']:.2e}: "
        + ("same work" if ok else f"NOT within {args.tolerance:g}")
    )
    if not ok:
        print(json.dumps({"agreement": check}))
        raise SystemExit(f"error: jaxoip and PyTorch disagree beyond {args.tolerance:g}; timing them would not compare")

    # Warm-up: compile jaxoip's program for this chunk, and run one torch chunk.
    search_oips(model, LAYER, maps[:chunk], x0[:chunk], cfg, chunk_size=chunk, options=PLAIN)
    xs, ms = ts.inputs(x0, maps)
    torch_timed_search(ts, xs[:chunk], ms[:chunk], min(args.steps, 5), chunk)

    work = len(maps) * args.steps
    secs = {"jaxoip": [], "torch": []}
    for r in range(args.rounds):
        # Alternate which side goes first, so a drift in the machine's load favours neither.
        order = ("jaxoip", "torch") if r % 2 == 0 else ("torch", "jaxoip")
        for side in order:
            if side == "jaxoip":
                secs[side].append(jax_timed_search(model, maps, x0, cfg, chunk))
            else:
                secs[side].append(torch_timed_search(ts, xs, ms, args.steps, chunk))
        print(
            f"round {r + 1}: jaxoip {work / secs['jaxoip'][-1]:10.1f}, torch {work / secs['torch'][-1]:10.1f} "
            f"image-steps/s; ratio {secs['torch'][-1] / secs['jaxoip'][-1]:.2f}"
        )
    rates = {k: [work / s for s in v] for k, v in secs.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_round = [t / j for j, t in zip(secs["jaxoip"], secs["torch"])]
    dev = jax.devices()[0]
    report = {
        "model": "32x32x3: conv32 same-BN-ReLU-maxpool2, conv64 same-BN-ReLU-maxpool2, conv128 same-BN-ReLU, "
        "GAP, dense 10",
        "layer": LAYER,
        "maps": args.maps,
        "restarts": args.restarts,
        "images": len(maps),
        "steps": args.steps,
        "chunk_size": chunk,
        "rounds": args.rounds,
        "seed": args.seed,
        "jax_precision": cfg.precision,
        "torch_dtype": "float32, TF32 off",
        "agreement": check,
        "image_steps_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "median_image_steps_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_jaxoip_over_torch_of_medians": round(med["jaxoip"] / med["torch"], 3),
        "ratio_jaxoip_over_torch_by_round": [round(v, 3) for v in per_round],
        "median_ratio_by_round": round(statistics.median(per_round), 3),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax_device": f"{len(jax.devices())} x {dev.device_kind} ({dev.platform})",
            "torch_device": ts.dev,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    print(
        f"medians over {args.rounds} rounds, {len(maps)} images x {args.steps} steps of {LAYER}, chunks of {chunk}: "
        f"jaxoip (highest) {med['jaxoip']:.1f}, PyTorch (float32) {med['torch']:.1f} image-steps/s; "
        f"jaxoip / PyTorch {report['ratio_jaxoip_over_torch_of_medians']:.2f} (median of the rounds' ratios "
        f"{report['median_ratio_by_round']:.2f})"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
