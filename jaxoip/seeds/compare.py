"""Seed comparison: do independently trained copies of the CNN learn the same filters, in the same order?

Features are the post-ReLU activations of a conv layer on the real test images, with spatial positions
as samples (`features`). For every pair of models and every conv layer: the channel x channel Pearson
correlation, the Hungarian matching that maximizes it and the semi-matching (each channel's best
partner), the "same order?" statistics, linear CKA (biased and debiased), the cosine similarity of
matched first-layer kernels (`similarity`), and for matched maps of one layer (Conv2D_3) the similarity
of their optimal input patterns: pixel, shift-invariant and cross-activation (`compare_oips`).

Beside every number, two nulls: a trained model against an untrained network of the same architecture,
and the trained pair with the test images shuffled for the second model. Confidence intervals come from
a bootstrap over images and one over seed pairs. `compare_report` writes the report and figures.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxoip import distributed
from jaxoip._check import check_type
from jaxoip.data.mnist import MNIST
from jaxoip.data.mnist import check_data as check_dataset
from jaxoip.errors import CheckpointError, JaxoipError, OutputError
from jaxoip.models import checkpoint
from jaxoip.models.cnn import (
    ModelConfig,
    TrainedModel,
    check_cnn,
    check_trained,
    get_layer,
    init_model,
    layer_shapes,
    layer_specs,
)
from jaxoip.models.memory import PlannedArray, check_arrays
from jaxoip.models.multiseed import train_seeds
from jaxoip.oip.noise import DEFAULT_RECIPES
from jaxoip.oip.plan import scan_arrays
from jaxoip.oip.search import default_chunk_size
from jaxoip.seeds.config import CONV_LAYERS, CompareConfig
from jaxoip.seeds.features import kernel_vectors, layer_features, positions_per_image, sample_positions
from jaxoip.seeds.oips import compare_oips, oip_pair_metrics
from jaxoip.seeds.report import write_report
from jaxoip.seeds.result import COMPARISONS, SeedComparison, seed_warnings, shared_seeds  # noqa: F401 - part of this module's API
from jaxoip.seeds.similarity import (
    block_bounds,
    block_moments,
    cka_from_totals,
    correlation_from_totals,
    correlation_matrix,
    linear_cka,
    live_channels,
    match_channels,
    pair_metrics,
    semi_match,
    weighted,
)

# Names that lived here before the module was split, still importable from jaxoip.seeds.compare.
__all__ = [
    "COMPARISONS",
    "CONV_LAYERS",
    "CompareConfig",
    "SeedComparison",
    "check_models",
    "compare_models",
    "correlation_matrix",
    "linear_cka",
    "match_channels",
    "semi_match",
    "untrained_models",
    "write_report",
]


def check_models(models: Sequence[TrainedModel], layers: Sequence[str] = CONV_LAYERS) -> None:
    """At least two models, one architecture, and `layers` conv layers of it; a JaxoipError otherwise."""
    if isinstance(models, (str, bytes)) or not hasattr(models, "__len__"):
        raise JaxoipError(f"models must be a list of TrainedModel, got {type(models).__name__}")
    for i, m in enumerate(models):
        check_trained(m, f"model {i}")
    if len(models) < 2:
        raise JaxoipError(f"a seed comparison needs at least two models, got {len(models)}")
    for i, m in enumerate(models):
        if not check_cnn(m.model, f"model {i}'s .model").rebuildable:
            raise JaxoipError(
                f"model {i} is a module of your own: the seed comparison compares convolution kernels and layers "
                "by name, which it does for jaxoip's CNN (a ModelConfig, a checkpoint or a Keras file)"
            )
    first = models[0].config
    for i, m in enumerate(models[1:], 1):
        if m.config != first:
            theirs = ", ".join(f"{s.name} {s.kind} {s.size}" for s in layer_specs(m.config))
            ours = ", ".join(f"{s.name} {s.kind} {s.size}" for s in layer_specs(first))
            raise CheckpointError(f"models 0 and {i} have different architectures: {ours} vs {theirs}")
    for name in layers:
        get_layer(first, name, ("conv",))


def check_settings(config: CompareConfig, data: MNIST, model_config=None, n_models: int = 2) -> None:
    """The settings that depend on the data or the architecture, refused before any training or search;
    memory included, for `n_models` models."""
    n = len(data.test_images)
    if config.test_subset is not None and config.test_subset > n:
        raise JaxoipError(f"test subset {config.test_subset} is larger than the {n} test images")
    used = config.test_subset or n
    if config.blocks > used:
        raise JaxoipError(f"blocks ({config.blocks}) must be at most the {used} test images compared")
    if config.oip_layer is not None:
        channels = layer_shapes(model_config or ModelConfig())[config.oip_layer][-1]
        if config.oip_maps > channels:
            raise JaxoipError(f"oip_maps ({config.oip_maps}) is more than the {channels} maps of {config.oip_layer}")
    check_arrays(compare_arrays(config, model_config or ModelConfig(), used, n_models))


def compare_arrays(config: CompareConfig, model_config, n_images: int, n_models: int) -> list:
    """The large arrays of a comparison of `n_models` models on `n_images` test images."""
    shapes = layer_shapes(model_config)
    pairs = n_models * (n_models - 1) // 2
    blocks = min(config.blocks, n_images)
    planned = [
        PlannedArray(
            f"--bootstrap {config.bootstrap}",
            "the bootstrap weights",
            f"{config.bootstrap} replicates x {blocks} blocks x 8 bytes",
            config.bootstrap * blocks * 8,
            device=False,
        ),
        PlannedArray(
            f"--bootstrap {config.bootstrap} (with {pairs} pairs of models)",
            "the bootstrap replicates of every pair",
            f"{config.bootstrap} replicates x {pairs} pairs x {len(COMPARISONS)} comparisons x 16 metrics x 8 bytes",
            config.bootstrap * pairs * len(COMPARISONS) * 16 * 8,
            device=False,
        ),
        PlannedArray(
            f"--seeds (or --models): {n_models} models",
            "the correlation matrices of every pair",
            f"{pairs} pairs x {len(COMPARISONS)} comparisons x sum of maps^2 of {', '.join(config.layers)} x 4 bytes",
            pairs * len(COMPARISONS) * sum(shapes[layer][-1] ** 2 for layer in config.layers) * 4,
            device=False,
        ),
    ]
    for layer in config.layers:
        h, w, c = shapes[layer]
        k = positions_per_image((h, w), n_images, config.max_samples)
        planned.append(
            PlannedArray(
                f"--max-samples {config.max_samples} --test-subset {n_images} ({n_models} models)",
                f"the sampled features of {layer}",
                f"{2 * n_models} trained and untrained models x {n_images} images x {k} positions x {c} maps x 4 bytes",
                2 * n_models * n_images * k * c * 4,
                device=False,
            )
        )
    if config.oip_layer is not None:
        options = dict(config.oip_scan_options)
        for p in scan_arrays(
            model_config.input_shape,
            shapes[config.oip_layer][-1],
            config.oip_maps,
            config.oip_restarts,
            config.oip,
            len(options.get("recipes", DEFAULT_RECIPES)),
            options.get("precursor_starts", 64),
            options.get("screen", 8),
            min(options.get("chunk_size") or default_chunk_size(), config.oip_maps * config.oip_restarts),
        ):
            flags = p.options.replace("--restarts", "--oip-restarts").replace("--steps", "--oip-steps")
            planned.append(dataclasses.replace(p, options=f"{flags} (--oip-maps {config.oip_maps})"))
    return planned


def untrained_models(template: TrainedModel, count: int, seed: int) -> list[TrainedModel]:
    """`count` freshly initialized networks of `template`'s architecture, keys disjoint from training seeds."""
    root = jax.random.fold_in(jax.random.key(seed), 0x0A7)
    return [
        TrainedModel(
            model=init_model(template.config, jax.random.fold_in(root, i)), standardization=template.standardization
        )
        for i in range(count)
    ]


def model_info(trained: TrainedModel, name: str) -> dict:
    """What the report tells of a model: its name, training seed and recipe, accuracy and data."""
    return {
        "name": name,
        "seed": trained.train_config.get("seed"),
        "epochs": trained.train_config.get("epochs"),
        "train_subset": trained.train_config.get("train_subset"),
        "test_accuracy": trained.metrics.get("test_accuracy"),
        "data_checksum": trained.data_checksum,
    }


def compare_models(
    models: Sequence[TrainedModel],
    data: MNIST,
    config: CompareConfig = CompareConfig(),
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> SeedComparison:
    """Compares every pair of `models` layer by layer, with both nulls and bootstrap CIs (see module doc)."""
    t_start = time.perf_counter()
    check_type("config", config, CompareConfig)
    check_models(models, config.layers)
    check_dataset(data)
    names = tuple(names) if names is not None else tuple(f"model {i}" for i in range(len(models)))
    check_settings(config, data, models[0].config, len(models))
    images = data.test_images[: config.test_subset] if config.test_subset else data.test_images
    n_images = images.shape[0]
    if n_images < 2:
        raise JaxoipError("need at least two test images")
    pairs = tuple(itertools.combinations(range(len(models)), 2))
    untrained = untrained_models(models[0], len(models), config.seed)
    rng = np.random.default_rng(config.seed)
    shuffle = rng.permutation(n_images)
    bounds = block_bounds(n_images, config.blocks)
    weights = rng.multinomial(len(bounds) - 1, np.full(len(bounds) - 1, 1.0 / (len(bounds) - 1)), size=config.bootstrap)
    weights = weights.astype(np.float64)
    ones = np.ones(len(bounds) - 1)
    first_conv = next(s.name for s in layer_specs(models[0].config) if s.kind == "conv")
    log = print if progress else (lambda *a, **k: None)

    rows, boots, details, correlations, live, null95, samples = [], {}, {}, {}, {}, {}, {}
    for li, layer in enumerate(config.layers):
        t0 = time.perf_counter()
        h, w, _ = layer_shapes(models[0].config)[layer]
        k = positions_per_image((h, w), n_images, config.max_samples)
        bs = max(1, min(500, n_images))
        positions = sample_positions(config.seed * 1000 + li, bs, h * w, k)
        samples[layer] = (n_images, k)

        def centered(trained):
            f = layer_features(trained, images, layer, positions, batch_size=bs, precision=config.oip.precision)
            return f, (f - f.reshape(-1, f.shape[-1]).mean(0, dtype=np.float64)).astype(np.float32)

        feats, raw_live = [], []
        for m in models:
            raw, f = centered(m)
            raw_live.append(live_channels(raw))
            feats.append(f)
        ufeats, u_live = [], []
        for m in untrained:
            raw, f = centered(m)
            u_live.append(live_channels(raw))
            ufeats.append(f)
        for i, mask in enumerate(raw_live):
            live[(layer, i)] = mask
        self_m = [block_moments(f, f, bounds) for f in feats]
        self_shuf = [block_moments(f[shuffle], f[shuffle], bounds) for f in feats]
        self_u = [block_moments(f, f, bounds) for f in ufeats]
        kernels = None
        if layer == first_conv:
            kernels = [kernel_vectors(m, layer) for m in models], [kernel_vectors(m, layer) for m in untrained]

        def features_of(c, b):
            if c == "untrained":
                return ufeats[b]
            return feats[b][shuffle] if c == "shuffled" else feats[b]

        def side(c, b):
            """Second model's self moments, live mask and kernels for comparison c."""
            if c == "untrained":
                return self_u[b], u_live[b], None if kernels is None else kernels[1][b]
            moments = self_m[b] if c == "real" else self_shuf[b]
            return moments, raw_live[b], None if kernels is None else kernels[0][b]

        def evaluate(a, b, c, cross, wv, threshold):
            mb, live_b, kb = side(c, b)
            tx, ty, txy = weighted(self_m[a], wv), weighted(mb, wv), weighted(cross, wv)
            corr = correlation_from_totals(tx, ty, txy)
            ker = None if kernels is None else (kernels[0][a], kb)
            cka = cka_from_totals(tx, ty, txy)
            met, det = pair_metrics(corr, raw_live[a], live_b, cka, config.thresholds, threshold, ker)
            return met, det, corr

        # The shuffled pairs' matched correlations set the threshold of frac_above_null95 for all.
        shuffled_cross = {(a, b): block_moments(feats[a], features_of("shuffled", b), bounds) for a, b in pairs}
        pooled = [evaluate(a, b, "shuffled", shuffled_cross[(a, b)], ones, None)[1]["corr"] for a, b in pairs]
        pooled = np.concatenate(pooled)
        null95[layer] = threshold = float(np.quantile(pooled, 0.95)) if pooled.size else 0.0
        for c in COMPARISONS:
            per_pair_boot = []
            for a, b in pairs:
                if c == "shuffled":
                    cross = shuffled_cross.pop((a, b))
                else:
                    cross = block_moments(feats[a], features_of(c, b), bounds)
                met, det, corr = evaluate(a, b, c, cross, ones, threshold)
                details[(layer, c, (a, b))] = det
                correlations[(layer, c, (a, b))] = corr.astype(np.float32)
                rows += [dict(layer=layer, comparison=c, a=a, b=b, metric=k_, value=v) for k_, v in met.items()]
                per_pair_boot.append(pd.DataFrame([evaluate(a, b, c, cross, wv, threshold)[0] for wv in weights]))
            boots[(layer, c)] = sum(per_pair_boot) / len(per_pair_boot)
        log(f"{layer}: {n_images} images x {k} positions, {len(pairs)} pairs, {time.perf_counter() - t0:.1f} s")

    table = pd.DataFrame(rows)
    oip, searched = {}, {}
    if config.oip_layer is not None:
        t0 = time.perf_counter()
        oip, searched = compare_oips(models, pairs, details, config, progress)
        extra = [
            dict(layer=config.oip_layer, comparison="real", a=a, b=b, metric=k_, value=v)
            for (a, b), o in oip.items()
            for k_, v in oip_pair_metrics(o).items()
        ]
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
        log(f"OIPs of {config.oip_layer}: {time.perf_counter() - t0:.1f} s")
    per_map = {(i, int(m)): j for i, s in searched.items() for j, m in enumerate(s.maps)}

    return SeedComparison(
        names=names,
        model_info=[model_info(m, n) for m, n in zip(models, names)],
        pairs=pairs,
        config=config,
        pairs_table=table,
        image_bootstrap=boots,
        details=details,
        correlations=correlations,
        live=live,
        null95=null95,
        samples=samples,
        oip=oip,
        oip_images={k: searched[k[0]].images[j] for k, j in per_map.items()},
        oip_objective={k: searched[k[0]].objective[j] for k, j in per_map.items()},
        oip_live={k: searched[k[0]].live[j] for k, j in per_map.items()},
        seconds=time.perf_counter() - t_start,
        used={
            "test_images": n_images,
            "blocks": len(bounds) - 1,
            "bootstrap": config.bootstrap,
            "oip_maps": {f"{names[a]} vs {names[b]}": len(o["maps_a"]) for (a, b), o in oip.items()},
        },
    )


def _check_model_folder(folder: Path, seeds) -> None:
    """Creates `folder`, refuses a `seed_<s>` in it that is not a checkpoint and removes a killed run's leftovers."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in (folder / f"seed_{s}" for s in seeds):  # Only checkpoints of ours are ever replaced.
        if (p.exists() or p.is_symlink()) and (p.is_symlink() or not (p / "metadata.json").is_file()):
            raise OutputError(f"{p} is not a checkpoint jaxoip wrote; move it away or choose another folder")
    for stale in folder.glob(".seed_*.tmp-*"):  # Left by a killed run; the output lock is ours.
        if re.fullmatch(r"\.seed_-?\d+\.tmp-\d+", stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def trained_models(seeds, cfg, data, folder: Path | None, max_parallel=None, progress=True, model_config=None):
    """One model per seed of `model_config` (default: the study's), as `train_seeds` trains them; each group of
    `max_parallel` seeds is saved to `folder/seed_<s>` when it finishes, and groups already there are loaded
    instead of trained again.

    A `seed_<s>` that is not a checkpoint (no metadata.json) is refused before any training, never replaced.
    With `progress`, the planned work is printed first and one bar counts every seed's epochs.

    In a multi-process run (`jaxoip.distributed`) every process calls it and each round of groups, one per
    process, is trained at once; only process 0 has a `folder` (None on the others), saves each round and
    returns the models. The others return None.
    """
    main, error = distributed.is_main(), None
    if main:
        try:
            _check_model_folder(folder, seeds)
        except (JaxoipError, OSError) as e:
            error = e
    distributed.agree(error, "the model folder")
    processes = distributed.process_count()
    group = max_parallel or -(-len(seeds) // processes)  # As `train_seeds` groups them.
    chunks = [seeds[lo : lo + group] for lo in range(0, len(seeds), group)]
    done = lambda chunk: all((folder / f"seed_{s}" / "metadata.json").is_file() for s in chunk)  # noqa: E731
    # Only process 0 sees the folder of a resumed run.
    finished = distributed.from_main({"done": np.array([main and done(c) for c in chunks])}, "the saved seeds")
    todo_chunks = [c for c, f in zip(chunks, finished["done"]) if not f]
    todo = sum(map(len, todo_chunks))
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        print(
            f"training {todo} seeds x {cfg.epochs} epochs on {cfg.train_subset or len(data.train_images)} images, "
            f"up to {group} seeds at a time ({len(seeds) - todo} already in {folder}); "
            "an estimate follows the first epoch",
            file=sys.stderr,
        )
        bar = tqdm(total=cfg.epochs * todo, desc=f"training {todo} seeds", unit="seed-epoch")
    models = {}
    for lo in range(0, len(todo_chunks), processes):
        batch = [s for chunk in todo_chunks[lo : lo + processes] for s in chunk]  # One group per process.
        trained = train_seeds(
            batch,
            cfg,
            model_config or ModelConfig(),
            data=data,
            max_parallel=group,
            progress=bar if bar is not None else False,
        )
        if not main:
            continue
        for s, m in zip(batch, trained):
            p = folder / f"seed_{s}"
            tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
            tmp.mkdir()
            checkpoint.write_checkpoint(tmp, m)
            if p.exists():  # A group cut short: its seeds are trained again together.
                shutil.rmtree(p)
            os.replace(tmp, p)  # A model is in place whole or not at all.
            models[s] = m
    if bar is not None:
        bar.close()
    if not main:
        return None
    return [models[s] if s in models else checkpoint.load_model(folder / f"seed_{s}") for s in seeds]
