"""jaxoip against the feature-visualization tools of each framework, on the same network and weights, in one run.

Three suites, each one network, one layer, the same maps (one start per map) and the same number of steps:

- `study`: the study's CNN with the shipped reference weights, `Conv2D_3` (issue 28's question: 128 maps x 256
  steps). jaxoip's built-in CNN against tf-keras-vis and Xplique on the same network written as a Keras 3 model
  (run by TensorFlow);
- `resnet18`: torchvision's `resnet18(weights=None)` (seeded random weights), `layer4.1.conv1`, 128x128x3 with
  ImageNet's normalization: jaxoip through torchax (`from_torch`) against Lucent's `render_vis` and Horama's
  `fourier`;
- `resnet50`: `keras.applications.ResNet50(weights=None)` (seeded), the residual `Add` layer `conv3_block4_add`,
  128x128x3, its input the pixels minus 127.5 (a random network has no preprocessing of its own; one range for
  all channels keeps every tool's box the same): jaxoip through Keras's JAX backend (`from_keras`) against
  tf-keras-vis and Xplique on TensorFlow. (MobileNetV2 with random weights was tried first: its activations
  shrink about 40x per block, to 1e-8 at `block_12_add`, so no tool's activation meant anything.)

Every tool keeps its images inside the model's valid input range (the pixels 0-255 as the model sees them): jaxoip
with `--pixel-range clip` (the study's network) or `sigmoid` (the others), Lucent, Horama and Xplique with their
sigmoid parameterizations, tf-keras-vis by clipping (its `input_range`). Each tool uses its own default step size
and update rule (their authors' tuned choices); jaxoip the study's ascent on the study's network, and its
Lucid-style search on the ImageNet-sized ones (decorrelated Fourier parameterization, sigmoid, Adam 0.05, jitter,
scale and rotation). Horama optimizes 6 random crops of its image per step by design: its image-steps count the crops.

Each tool runs in a fresh process of its own Python (the peers need TensorFlow or torchvision, which do not install
beside jaxoip's CPU torch: give their interpreters with `--tf-python` and `--torch-python`). In that process it
searches twice: the first call (tracing and compilation included; jaxoip without its persistent cache) and the
second call, warm. A third jaxoip process with a filled persistent compilation cache gives its first call as a user
who ran a scan before sees it. Rounds run the tools in turn; medians over rounds. The activation each tool reached is
measured afterwards by the framework's own forward pass (torch for ResNet-18, Keras on TensorFlow for the others) on
each tool's final images: the mean of the target map, averaged over maps.

    python experiments/bench_peers.py --tf-python /path/to/tf-venv/bin/python \\
        --torch-python /path/to/torch-venv/bin/python --json bench_peers.json

The script itself imports neither jaxoip nor a peer at the top: the same file is the worker in every interpreter.
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

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent

SUITES = {
    "study": dict(
        layer="Conv2D_3", size=(28, 28, 1), maps=128, steps=256, framework="keras",
        peers=("xplique", "tf-keras-vis"),
    ),
    "resnet18": dict(
        layer="layer4.1.conv1", size=(128, 128, 3), maps=4, steps=64, framework="torch",
        peers=("lucent", "horama"),
    ),
    "resnet50": dict(
        layer="conv3_block4_add", size=(128, 128, 3), maps=8, steps=32, framework="keras",
        peers=("xplique", "tf-keras-vis"),
    ),
}  # fmt: skip
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
HORAMA_CROPS = 6  # horama.fourier's crops_per_iteration default


# ----------------------------------------------------------------------------------------------------------------
# Each suite's valid input range, in the model's input units (per channel).


def input_bounds(suite: str, mean: float = 0.0, std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per channel: the model inputs of pixels 0 and 255."""
    if suite == "study":
        return np.array([(0 - mean) / std]), np.array([(255 - mean) / std])
    if suite == "resnet18":
        return (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
    return np.array([-127.5] * 3), np.array([127.5] * 3)


# ----------------------------------------------------------------------------------------------------------------
# Workers: one per tool; each prints one JSON line and saves its final images (model inputs, NHWC float32).


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def make_models(suite: str, work: Path, seed: int) -> dict:
    """Writes the suite's network once (in the interpreter of its framework) and describes it."""
    if suite == "study":  # jaxoip's interpreter: the reference weights as a Keras 3 model for the peers.
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import keras
        from flax import nnx

        from jaxoip.models.checkpoint import load_reference_model

        ref = load_reference_model()
        w = nnx.to_pure_dict(nnx.state(ref.model, nnx.Param))
        L = keras.layers
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                L.Conv2D(32, 3, activation="relu", name="Conv2D_1"), L.MaxPooling2D(2),
                L.Conv2D(64, 3, activation="relu", name="Conv2D_2"), L.MaxPooling2D(2),
                L.Conv2D(128, 3, activation="relu", name="Conv2D_3"), L.Flatten(),
                L.Dense(100, activation="relu", name="Dense_1"), L.Dense(10, activation="softmax", name="Dense_2"),
            ]
        )  # fmt: skip
        for name in ("Conv2D_1", "Conv2D_2", "Conv2D_3", "Dense_1", "Dense_2"):
            model.get_layer(name).set_weights([np.asarray(w[name]["kernel"]), np.asarray(w[name]["bias"])])
        model.save(work / "study.keras")
        mean, std = ref.standardization.mean, ref.standardization.std
        return {"mean": float(np.ravel(mean)[0]), "std": float(np.ravel(std)[0])}
    if suite == "resnet18":  # the peers' interpreter (torchvision)
        import torch
        import torchvision

        torch.manual_seed(seed)
        net = torchvision.models.resnet18(weights=None).eval()
        torch.save(net.state_dict(), work / "resnet18.pt")
        return {}
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # resnet50, in the TensorFlow interpreter
    import keras

    keras.utils.set_random_seed(seed)
    keras.applications.ResNet50(weights=None, input_shape=SUITES["resnet50"]["size"]).save(work / "resnet50.keras")
    return {}


def jaxoip_worker(suite: str, work: Path, maps: list[int], steps: int, seed: int, cache: str | None) -> dict:
    t0 = time.perf_counter()
    if cache:
        from jaxoip.cli import enable_caches

        os.environ["JAXOIP_CACHE_DIR"] = cache
        enable_caches()
    import jax

    from jaxoip.oip.config import ObjectiveConfig
    from jaxoip.oip.noise import initial_images, start_keys
    from jaxoip.oip.search import OIPConfig, SearchSetup, search_oips

    spec = SUITES[suite]
    if suite == "study":
        from jaxoip.models.checkpoint import load_reference_model

        trained, layer = load_reference_model(), "Conv2D_3"
        transforms = None  # the study's ascent, projected into the pixel range (`--pixel-range clip`)
    elif suite == "resnet18":
        import torch

        sys.path.insert(0, str(ROOT / "tests"))
        from torch_models import ResNet18  # torchvision's resnet18, written out (no torchvision beside CPU torch)

        from jaxoip.data.mnist import Standardization
        from jaxoip.models.torch_net import from_torch

        net = ResNet18()
        net.load_state_dict(torch.load(work / "resnet18.pt"))
        trained = from_torch(net, spec["size"], Standardization.parse("imagenet"))
        layer = spec["layer"]
        transforms = dict(jitter=8.0, scale=0.1, rotate=10.0)
    else:
        from jaxoip.data.mnist import Standardization
        from jaxoip.models.keras_net import from_keras

        trained = from_keras(str(work / "resnet50.keras"), Standardization(mean=127.5, std=1.0))
        layer = spec["layer"]
        transforms = dict(jitter=8.0, scale=0.1, rotate=10.0)
    if transforms is None:
        cfg = OIPConfig(steps=steps, pixel_range="clip", early_stop=False, snapshot_steps=())
    else:
        cfg = OIPConfig(
            steps=steps, param="fourier", pixel_range="sigmoid", optimizer="adam", epsilon=0.05,
            early_stop=False, snapshot_steps=(), **transforms,
        )  # fmt: skip
    setup = SearchSetup.of(trained.standardization, seed=seed)
    keys = start_keys(seed, maps, 1).reshape(-1)
    x0 = initial_images(keys, ["coarse7"], shape=spec["size"])
    loaded = time.perf_counter() - t0

    def search():
        return search_oips(trained.model, layer, maps, x0, cfg, options=ObjectiveConfig(wake=False), setup=setup)

    first, res = _timed(search)
    second, res = _timed(search)
    np.save(work / f"{suite}_jaxoip.npy", np.asarray(res.images, np.float32))
    return dict(
        first_s=first, second_s=second, load_s=loaded, own_objective=[float(v) for v in res.objective],
        versions={"jax": jax.__version__}, device=str(jax.devices()[0].platform),
    )  # fmt: skip


def lucent_worker(work: Path, maps: list[int], steps: int, seed: int) -> dict:
    import functools
    import operator

    import torch
    import torchvision
    from lucent.optvis import objectives, param, render

    size = SUITES["resnet18"]["size"][0]
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(work / "resnet18.pt"))
    net.eval()
    objective = functools.reduce(
        operator.add, [objectives.channel("layer4_1_conv1", m, batch=i) for i, m in enumerate(maps)]
    )

    def search():
        torch.manual_seed(seed)
        # Lucent's defaults: decorrelated FFT image through a sigmoid, its standard transforms, Adam 0.05,
        # ImageNet normalization; the network sees `size` pixels as jaxoip's does (fixed_image_size).
        return render.render_vis(
            net, objective, lambda: param.image(size, batch=len(maps)), thresholds=(steps,),
            show_image=False, progress=False, fixed_image_size=size,
        )[-1]  # fmt: skip

    first, _ = _timed(search)
    second, images = _timed(search)  # (n, H, W, 3) in [0, 1]
    np.save(work / "resnet18_lucent.npy", ((images - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32))
    return dict(first_s=first, second_s=second, versions={"torch": torch.__version__})


def horama_worker(work: Path, maps: list[int], steps: int, seed: int) -> dict:
    import torch
    import torchvision
    from horama import fourier

    size = SUITES["resnet18"]["size"][0]
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(work / "resnet18.pt"))
    net.eval()
    captured = {}
    net.layer4[1].conv1.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    lo, hi = input_bounds("resnet18")

    def one(m):
        def objective(images):
            net(images)
            return captured["a"][:, m].mean()

        # Horama's defaults (NAdam 1.0, decay 1.5, 6 crops of 20-25% per step, noise), at this network's size
        # and inside the normalized range of pixels 0-255 (the tightest single range of the three channels).
        img, _ = fourier(
            objective, total_steps=steps, image_size=size, model_input_size=size,
            values_range=(float(lo.max()), float(hi.min())), device="cpu",
        )  # fmt: skip
        return img.detach().numpy().transpose(1, 2, 0)

    def search():
        torch.manual_seed(seed)
        return np.stack([one(m) for m in maps])

    first, _ = _timed(search)
    second, images = _timed(search)
    np.save(work / "resnet18_horama.npy", images.astype(np.float32))
    return dict(first_s=first, second_s=second, image_steps_per_step=HORAMA_CROPS)


def _keras_model(suite: str, work: Path):
    import keras

    return keras.models.load_model(work / f"{suite}.keras", compile=False)


def xplique_worker(suite: str, work: Path, maps: list[int], steps: int, seed: int, bounds) -> dict:
    import tensorflow as tf
    from xplique.features_visualizations import Objective, optimize

    model = _keras_model(suite, work)
    size = SUITES[suite]["size"]
    lo, hi = float(np.max(bounds[0])), float(np.min(bounds[1]))
    objective = Objective.channel(model, SUITES[suite]["layer"], maps)

    def search():
        tf.random.set_seed(seed)
        # Xplique's defaults (Adam, FFT with decay 0.85, sigmoid, its standard transformations) at the model's size.
        imgs, _ = optimize(objective, nb_steps=steps, custom_shape=size[:2], values_range=(lo, hi))
        return np.asarray(imgs[0])

    first, _ = _timed(search)
    second, images = _timed(search)
    np.save(work / f"{suite}_xplique.npy", images.astype(np.float32))
    return dict(first_s=first, second_s=second, versions={"tensorflow": tf.__version__})


def tfkv_worker(suite: str, work: Path, maps: list[int], steps: int, seed: int, bounds) -> dict:
    import tensorflow as tf
    from tf_keras_vis.activation_maximization import ActivationMaximization
    from tf_keras_vis.utils.model_modifiers import ExtractIntermediateLayer

    model = _keras_model(suite, work)
    size = SUITES[suite]["size"]
    lo, hi = float(np.max(bounds[0])), float(np.min(bounds[1]))
    targets = tf.constant(maps)
    am = ActivationMaximization(model, model_modifier=[ExtractIntermediateLayer(SUITES[suite]["layer"])], clone=True)

    def score(out):  # image i: the mean of map maps[i]
        return tf.gather(tf.reduce_mean(out, axis=(1, 2)), targets, axis=1, batch_dims=1)

    def search():
        seeds = tf.random.stateless_uniform((len(maps), *size), (seed, 0), lo, hi)
        # tf-keras-vis's defaults (RMSprop 1.0, jitter and rotation, TV and L1 penalties), clipped to the range.
        return np.asarray(am(score, seed_input=seeds, input_range=(lo, hi), steps=steps))

    first, _ = _timed(search)
    second, images = _timed(search)
    np.save(work / f"{suite}_tf-keras-vis.npy", images.astype(np.float32))
    return dict(first_s=first, second_s=second, versions={"tensorflow": tf.__version__})


def evaluate(suite: str, work: Path, maps: list[int], tools: list[str], bounds) -> dict:
    """Each tool's final images through the framework's own forward pass: the target map's mean per image."""
    out = {}
    if suite == "resnet18":
        import torch
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        net.load_state_dict(torch.load(work / "resnet18.pt"))
        net.eval()
        captured = {}
        net.layer4[1].conv1.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))

        def means(x):
            with torch.no_grad():
                net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
            return captured["a"].mean((2, 3)).numpy()
    else:
        import keras

        model = _keras_model(suite, work)
        sub = keras.Model(model.inputs, model.get_layer(SUITES[suite]["layer"]).output)

        def means(x):
            return np.asarray(sub(x, training=False)).mean((1, 2))

    lo, hi = bounds
    for tool in tools:
        x = np.load(work / f"{suite}_{tool}.npy")
        act = means(x)[np.arange(len(maps)), maps]
        outside = ((x < lo - 1e-3 * (hi - lo)) | (x > hi + 1e-3 * (hi - lo))).mean()
        out[tool] = dict(activation=[float(a) for a in act], out_of_range=float(outside))
    return out


def worker(args) -> None:
    work, maps = Path(args.work), list(range(args.maps or 0))
    study = json.loads(args.study_std) if args.study_std else {}
    bounds = input_bounds(args.suite, **study)
    if args.worker == "make":
        res = make_models(args.suite, work, args.seed)
    elif args.worker == "evaluate":
        res = evaluate(args.suite, work, maps, args.tools.split(","), bounds)
    elif args.worker == "jaxoip":
        res = jaxoip_worker(args.suite, work, maps, args.steps, args.seed, args.cache)
    elif args.worker == "lucent":
        res = lucent_worker(work, maps, args.steps, args.seed)
    elif args.worker == "horama":
        res = horama_worker(work, maps, args.steps, args.seed)
    elif args.worker == "xplique":
        res = xplique_worker(args.suite, work, maps, args.steps, args.seed, bounds)
    else:
        res = tfkv_worker(args.suite, work, maps, args.steps, args.seed, bounds)
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------------------------------------
# The orchestrator (jaxoip's interpreter).


def call(python: str, *argv: str, env: dict | None = None) -> tuple[dict, float]:
    t = time.perf_counter()
    p = subprocess.run([python, str(HERE), *argv], capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.exit(f"error: {' '.join(argv[:4])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][7:]), wall


def run_suite(suite: str, args, pythons: dict, work: Path, quiet_env: dict) -> dict:
    spec = SUITES[suite]
    maps = args.maps or spec["maps"]
    steps = args.steps or spec["steps"]
    make_python = pythons["jaxoip"] if suite == "study" else pythons[spec["framework"]]
    study, _ = call(make_python, "--worker", "make", "--suite", suite, "--work", str(work), "--seed", "0",
                    env=quiet_env)  # fmt: skip
    common = ["--suite", suite, "--work", str(work), "--maps", str(maps), "--steps", str(steps), "--seed", "0"]
    if suite == "study":
        common += ["--study-std", json.dumps(study)]
    tools = ["jaxoip", "jaxoip-cached", *spec["peers"]]
    cache = work / f"cache-{suite}"
    call(pythons["jaxoip"], "--worker", "jaxoip", *common, "--cache", str(cache), env=quiet_env)  # fills the cache
    rounds: dict[str, list] = {t: [] for t in tools}
    for r in range(args.rounds):
        for tool in tools:
            if tool == "jaxoip":
                res, wall = call(pythons["jaxoip"], "--worker", "jaxoip", *common, env=quiet_env)
            elif tool == "jaxoip-cached":
                res, wall = call(pythons["jaxoip"], "--worker", "jaxoip", *common, "--cache", str(cache),
                                 env=quiet_env)  # fmt: skip
            else:
                python = pythons[spec["framework"]]
                res, wall = call(python, "--worker", tool, *common, env=quiet_env)
            res["process_s"] = wall
            rounds[tool].append(res)
            print(f"  {suite} round {r + 1} {tool}: first {res['first_s']:.2f} s, second {res['second_s']:.2f} s, "
                  f"process {wall:.1f} s", flush=True)  # fmt: skip
    evaluated_tools = ["jaxoip", *spec["peers"]]
    quality, _ = call(pythons[spec["framework"]], "--worker", "evaluate", *common, "--tools",
                      ",".join(evaluated_tools), env=quiet_env)  # fmt: skip
    rows = {}
    for tool in tools:
        per_step = rounds[tool][0].get("image_steps_per_step", 1)
        image_steps = maps * steps * per_step
        med = {k: statistics.median(r[k] for r in rounds[tool]) for k in ("first_s", "second_s", "process_s")}
        rows[tool] = dict(
            **med, image_steps=image_steps, first_rate=image_steps / med["first_s"],
            second_rate=image_steps / med["second_s"], **quality.get(tool if tool != "jaxoip-cached" else "", {}),
        )  # fmt: skip
    own = np.asarray(rounds["jaxoip"][-1]["own_objective"])
    framework = np.asarray(quality["jaxoip"]["activation"])
    rel = np.abs(own - framework) / np.maximum(np.abs(framework), 1e-6)
    rows["jaxoip"]["own_vs_framework_max_rel"] = float(np.max(rel))
    return dict(suite=suite, layer=spec["layer"], size=spec["size"], maps=maps, steps=steps, starts=1, rows=rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suites", default="study,resnet18,resnet50")
    p.add_argument("--tf-python", default=None, help="a Python with tensorflow, tf-keras-vis and xplique")
    p.add_argument("--torch-python", default=None, help="a Python with torch, torchvision, torch-lucent and horama")
    p.add_argument("--maps", type=int, default=None, help="maps (one start each; default: per suite)")
    p.add_argument("--steps", type=int, default=None, help="steps (default: per suite)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    # Worker arguments (the same file run by each tool's Python).
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--suite", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tools", default="", help=argparse.SUPPRESS)
    p.add_argument("--study-std", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    suites = args.suites.split(",")
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        sys.exit(f"error: unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    pythons = {"jaxoip": sys.executable, "keras": args.tf_python, "torch": args.torch_python}
    for s in suites:
        if not pythons[SUITES[s]["framework"]]:
            sys.exit(f"error: suite {s} needs --{'tf' if SUITES[s]['framework'] == 'keras' else 'torch'}-python")
    if args.json and Path(args.json).exists() and not args.json.endswith(".json"):
        sys.exit(f"error: --json {args.json} exists and is not a .json file")
    quiet_env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    out = dict(machine=f"{platform.machine()} {os.cpu_count()} cores", python=platform.python_version(), suites=[])
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        for s in suites:
            work = Path(tmp) / s
            work.mkdir()
            print(f"suite {s}", flush=True)
            out["suites"].append(run_suite(s, args, pythons, work, quiet_env))
    for s in out["suites"]:
        print(f"\n{s['suite']}: {s['layer']} at {s['size']}, {s['maps']} maps x 1 start x {s['steps']} steps")
        base = s["rows"]["jaxoip"]
        for tool, row in s["rows"].items():
            act = f"{np.mean(row['activation']):.4g}" if "activation" in row else "-"
            print(f"  {tool:14s} first {row['first_s']:7.2f} s ({row['first_rate']:8.1f} img-steps/s)  "
                  f"second {row['second_s']:7.2f} s ({row['second_rate']:8.1f})  time / jaxoip's: first "
                  f"{row['first_s'] / base['first_s']:5.2f}x second {row['second_s'] / base['second_s']:5.2f}x  "
                  f"activation {act}  out of range {row.get('out_of_range', float('nan')):.4f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
