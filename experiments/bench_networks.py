"""The study's CNN through every framework jaxoip takes, searched side by side in one run.

Same weights (the shipped reference model), same layer (`Conv2D_3`), maps, starts, steps and precision;
rows: the built-in CNN; the same network as a Keras 3 graph run by Keras's JAX backend (`from_keras`);
as a Flax NNX module of `nnx.Conv`/`nnx.Linear` (`from_nnx`); as a torch module through torchax
(`from_torch`, when torch and torchax are installed). The foreign rows run with and without
`jaxoip.models.im2col` (their convolutions as im2col matmuls). Reports image-steps per second after
compilation, each row's ratio to the built-in CNN, and the largest difference of the final objectives
from the built-in row's (the same search, so the same OIPs up to float rounding).

    python experiments/bench_networks.py                    # 32 maps x 2 starts x 50 steps
    python experiments/bench_networks.py --maps 128 --steps 100 --json bench_networks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
from flax import nnx

from jaxoip.models.adapter import from_nnx
from jaxoip.models.checkpoint import load_reference_model
from jaxoip.oip.config import ObjectiveConfig
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.search import OIPConfig, search_oips


class StudyNNX(nnx.Module):
    """The study's CNN written as a researcher would in Flax NNX."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs)
        # The ReLU inside the submodule, so that the layer "conv3" is the activated maps, as in the study.
        self.conv3 = nnx.Sequential(nnx.Conv(64, 128, (3, 3), padding="VALID", rngs=rngs), nnx.relu)
        self.dense1 = nnx.Linear(3 * 3 * 128, 100, rngs=rngs)
        self.dense2 = nnx.Linear(100, 10, rngs=rngs)

    def __call__(self, x):
        pool = lambda y: nnx.max_pool(y, (2, 2), (2, 2))  # noqa: E731
        x = pool(nnx.relu(self.conv1(x)))
        x = pool(nnx.relu(self.conv2(x)))
        x = self.conv3(x)
        return self.dense2(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))


def study_weights(trained) -> dict[str, dict[str, np.ndarray]]:
    state = nnx.to_pure_dict(nnx.state(trained.model, nnx.Param))
    return {k: {n: np.asarray(a) for n, a in v.items()} for k, v in state.items()}


def as_nnx(trained, im2col):
    w = study_weights(trained)
    net = StudyNNX(nnx.Rngs(0))
    for mine, theirs in [
        ("conv1", "Conv2D_1"),
        ("conv2", "Conv2D_2"),
        ("conv3", "Conv2D_3"),
        ("dense1", "Dense_1"),
        ("dense2", "Dense_2"),
    ]:
        layer = net.conv3.layers[0] if mine == "conv3" else getattr(net, mine)
        layer.kernel[...] = w[theirs]["kernel"]
        layer.bias[...] = w[theirs]["bias"]
    return from_nnx(net, (28, 28, 1), trained.standardization, im2col=im2col), "conv3"


def as_keras(trained, im2col):
    import keras

    from jaxoip.models.keras_net import from_keras

    w = study_weights(trained)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu", name="Conv2D_1"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu", name="Conv2D_2"),
            layers.MaxPooling2D(2),
            layers.Conv2D(128, 3, activation="relu", name="Conv2D_3"),
            layers.Flatten(),
            layers.Dense(100, activation="relu", name="Dense_1"),
            layers.Dense(10, activation="softmax", name="Dense_2"),
        ]
    )
    for name in ("Conv2D_1", "Conv2D_2", "Conv2D_3", "Dense_1", "Dense_2"):
        model.get_layer(name).set_weights([w[name]["kernel"], w[name]["bias"]])
    return from_keras(model, trained.standardization, im2col=im2col), "Conv2D_3"


def as_torch(trained, im2col):
    import torch

    from jaxoip.models.torch_net import from_torch

    w = study_weights(trained)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3), torch.nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        for i, name in zip((0, 3, 6), ("Conv2D_1", "Conv2D_2", "Conv2D_3")):
            net[i].weight.copy_(torch.from_numpy(np.transpose(w[name]["kernel"], (3, 2, 0, 1)).copy()))
            net[i].bias.copy_(torch.from_numpy(w[name]["bias"]))
    return from_torch(net, (28, 28, 1), trained.standardization, im2col=im2col), "7"


def timed(trained, layer, maps, x0, cfg):
    t = time.perf_counter()
    res = search_oips(trained.model, layer, maps, x0, cfg, options=ObjectiveConfig(wake=False))
    return time.perf_counter() - t, res.objective


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", type=int, default=32)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    reference = load_reference_model()
    maps = np.repeat(np.arange(args.maps), args.restarts)
    keys = start_keys(0, list(range(args.maps)), args.restarts).reshape(-1)
    x0 = np.asarray(initial_images(keys, ["coarse7"]))
    # The study's plain ascent (no wake-up: a foreign layer's output has no separate pre-activation).
    cfg = OIPConfig(steps=args.steps, early_stop=False)
    image_steps = maps.size * args.steps
    rows = [("built-in CNN", lambda: (reference, "Conv2D_3"))]
    for label, build in [("Keras graph", as_keras), ("NNX module", as_nnx), ("torch via torchax", as_torch)]:
        rows.append((f"{label}, im2col", lambda build=build: build(reference, True)))
        rows.append((f"{label}, framework convs", lambda build=build: build(reference, False)))
    built = []
    print(f"{jax.devices()[0].device_kind}, {platform.machine()}, {maps.size} images x {args.steps} steps")
    for label, build in rows:
        try:
            trained, layer = build()
        except ImportError as e:
            print(f"{label:34s} not measured ({e.name} not installed)")
            continue
        search_oips(trained.model, layer, maps, x0, cfg)  # Compiles.
        built.append((label, trained, layer))
    # Round-robin repeats, the best of each row: a load that comes and goes touches every row alike.
    best = {label: float("inf") for label, _, _ in built}
    objectives = {}
    for _ in range(args.repeats):
        for label, trained, layer in built:
            seconds, objectives[label] = timed(trained, layer, maps, x0, cfg)
            best[label] = min(best[label], seconds)
    results, base = [], built[0][0]
    for label, _, _ in built:
        speed, ratio = image_steps / best[label], best[base] / best[label]
        diff = float(np.max(np.abs(objectives[label] - objectives[base]) / np.maximum(np.abs(objectives[base]), 1e-6)))
        results.append(dict(row=label, image_steps_per_s=speed, ratio=ratio, max_rel_objective_diff=diff))
        print(f"{label:34s} {speed:10.0f} image-steps/s  {ratio:5.2f}x  objectives within {diff:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(jax.devices()[0]), args=vars(args), rows=results), f, indent=1)


if __name__ == "__main__":
    main()
