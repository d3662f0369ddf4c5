"""Which search style gives the most informative OIPs? Every style on two layers of one model, in one run.

For each style and layer, one `scan_maps` (same maps, starts, steps and seed for every style) computes the
per-map measures of `jaxoip.oip.quality`; the table gives, per style and layer, the mean of each measure over
maps with a 95% bootstrap CI over maps, the two-choice accuracies (chance 0.5) and the search's
image-steps per second. Styles:

- study: the study's plain ascent without wake-up; wake: the same with wake-up (the default);
- robust: jitter, scaling, rotation, total-variation and blur penalties; fourier: the decorrelated
  parameterization; maco: phase only, magnitude fixed to the training images' mean spectrum;
- diversity: Lucid's diversity term across a map's starts; selective: the target's normalized activation
  minus `--selective` times the mean of the layer's other maps;
- clip, sigmoid: the default search with its image kept in pixels [0, 255] (`--pixel-range`), clip-fourier
  and sigmoid-maco the same with those parameterizations.

The chance-level controls of the two-choice task (another map's OIPs, noise, random digits) come with each row.

With `--observer-model` (a checkpoint or Keras file of an independently trained network) every row also has
the same trials judged by the second observer (cosine similarity of the images' features in that network,
`jaxoip.oip.two_choice`; columns ending in `_features`), the paired differences OIP minus exemplars under
each observer, and `observer_agreement`: each observer's verdict on OIPs against exemplars (the paired
difference's CI above, below or around 0), whether the verdicts differ or the ordering of the means flips,
and the arms whose CIs under the two observers do not overlap.

    python experiments/oip_quality.py --out oip_quality.json          # both layers, every style
    python experiments/oip_quality.py --maps 16 --restarts 2 --steps 50  # a smoke run
    python experiments/oip_quality.py --observer-model /path/to/other_seed --out both_observers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import numpy as np

from jaxoip.data.mnist import load_mnist
from jaxoip.errors import JaxoipError
from jaxoip.models.checkpoint import resolve_model
from jaxoip.oip.config import ObjectiveConfig, OIPConfig
from jaxoip.oip.scan import scan_maps
from jaxoip.oip.transforms import style_config
from jaxoip.oip.two_choice import QualityConfig, bootstrap_mean, quality_rng, resolve_observer

STYLES = (
    "study",
    "wake",
    "robust",
    "fourier",
    "maco",
    "diversity",
    "selective",
    "clip",
    "sigmoid",
    "clip-fourier",
    "sigmoid-maco",
)
MEASURES = ("out_of_range_frac", "superstimulus", "superstimulus_raw", "selectivity_ratio", "stability")
TWO_CHOICE = ("two_choice_oip", "two_choice_exemplars", "two_choice_oip_minmax", "two_choice_exemplars_minmax")
FEATURES = tuple(f"{name}_features" for name in TWO_CHOICE)  # The second observer's arms.
DIFFERENCES = tuple(f"oip_minus_exemplars{s}" for s in ("", "_minmax", "_features", "_minmax_features"))


def style(name: str, steps: int, selective: float) -> tuple[OIPConfig, ObjectiveConfig]:
    """The search's config and the objective's options of a style: the scan's defaults with one thing changed."""
    options = {"study": ObjectiveConfig(wake=False), "selective": ObjectiveConfig(selective=selective)}
    fields = {
        "study": {},
        "wake": {},
        "robust": {},
        "fourier": dict(param="fourier"),
        "maco": dict(param="maco"),
        "diversity": dict(diversity=1.0),
        "selective": {},
        "clip": dict(pixel_range="clip"),
        "sigmoid": dict(pixel_range="sigmoid"),
        "clip-fourier": dict(pixel_range="clip", param="fourier"),
        "sigmoid-maco": dict(pixel_range="sigmoid", param="maco"),
    }[name]
    cfg = style_config("robust" if name == "robust" else "study", **{"steps": steps, **fields})
    return cfg, options.get(name, ObjectiveConfig())


def row(result, bootstrap: int, seed: int) -> dict:
    """Means over maps with bootstrap CIs of the measures (both observers' two-choice arms), the paired
    differences and where the observers disagree, the share of maps ranked top, and the search's speed."""
    table = result.table()
    rng = quality_rng(seed)
    out = {}
    # The second observer's arms last, so the earlier columns draw the same resamples as before.
    for name in MEASURES + TWO_CHOICE + FEATURES:
        v = np.asarray(table[name], float) if name in table else np.array([])
        v = v[np.isfinite(v)]
        out[name] = bootstrap_mean(v, bootstrap, rng) if v.size else None
    summary = result.quality.summary.get("two_choice", {})
    for name in DIFFERENCES:
        out[name] = summary.get(name)
    out["observer_agreement"] = summary.get("observer_agreement")
    rank = np.asarray(table["selectivity_rank"], float)
    rank = rank[np.isfinite(rank)]
    out["frac_selectivity_rank_0"] = round(float(np.mean(rank == 0)), 4) if rank.size else None
    out["controls"] = result.quality.summary.get("two_choice", {}).get("controls")
    out["found"] = int(np.sum(table["found"]))
    out["maps"] = len(table)
    out["image_steps_per_second"] = round(result.image_steps_per_second, 1)
    out["search_seconds"] = round(result.search_seconds, 2)
    return out


def fmt(ci: dict | None) -> str:
    if ci is None or ci["mean"] is None:
        return "—"
    return f"{ci['mean']:.3f} [{ci['ci95'][0]:.3f}, {ci['ci95'][1]:.3f}]"


def disagreement(agreement: dict | None) -> str:
    """The table's cell for where the observers disagree: per variant, the verdicts when they differ, a flip
    of the means' ordering, and the arms whose CIs do not overlap; '—' without a second observer."""
    if agreement is None:
        return "—"
    notes = []
    for variant in ("max", "minmax"):
        a = agreement.get(variant)
        if a is None:
            continue
        if a["verdicts_differ"]:
            notes.append(f"{variant}: pixels {a['pixels']}, features {a['features']}")
        elif a["ordering_flips"]:
            notes.append(f"{variant}: ordering flips")
    if agreement["arms_apart"]:
        notes.append("CIs apart: " + ", ".join(a.removeprefix("two_choice_") for a in agreement["arms_apart"]))
    return "; ".join(notes) or "none"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped reference model)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--layers", default="Conv2D_2,Conv2D_3")
    p.add_argument("--styles", default=",".join(STYLES))
    p.add_argument("--maps", type=int, default=None, help="the first N maps of each layer (default: all)")
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--selective", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument(
        "--observer-model",
        default=None,
        help="a second two-choice observer: feature similarity in this independently trained model's "
        "checkpoint or Keras file (default: the pixel observer only)",
    )
    p.add_argument(
        "--observer-layer", default=None, help="the observer model's layer (default: its layer before the last)"
    )
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    quality = QualityConfig(
        bootstrap=args.bootstrap, observer_model=args.observer_model, observer_layer=args.observer_layer
    )
    observer_layer = None
    if args.observer_model is not None:  # A bad observer fails before any search, in one line.
        try:
            observer_layer = resolve_observer(quality)[1]
        except JaxoipError as e:
            print(f"oip_quality: {e}", file=sys.stderr)
            sys.exit(2)
    trained, data = resolve_model(args.model, args.data_dir), load_mnist(args.data_dir)
    rows = []
    t0 = time.perf_counter()
    for layer in args.layers.split(","):
        n = trained.model(np.zeros((1, *trained.config.input_shape), np.float32), until=layer).shape[-1]
        maps = range(min(args.maps or n, n))
        for name in args.styles.split(","):
            cfg, options = style(name, args.steps, args.selective)
            result = scan_maps(
                trained,
                layer,
                maps,
                args.restarts,
                cfg,
                seed=args.seed,
                data=data,
                progress=False,
                quality=quality,
                options=options,
            )
            rows.append({"layer": layer, "style": name, **row(result, args.bootstrap, args.seed)})
            r = rows[-1]
            features = ""
            if args.observer_model is not None:
                features = (
                    f"  features: OIP {fmt(r['two_choice_oip_features'])}  exemplars "
                    f"{fmt(r['two_choice_exemplars_features'])}  disagree: {disagreement(r['observer_agreement'])}"
                )
            print(
                f"{layer:9s} {name:10s} two-choice OIP {fmt(r['two_choice_oip'])}  exemplars "
                f"{fmt(r['two_choice_exemplars'])}{features}  selectivity top {r['frac_selectivity_rank_0']}  "
                f"{r['image_steps_per_second']:.0f} image-steps/s",
                flush=True,
            )
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(jax.devices()[0]),
        "restarts": args.restarts,
        "steps": args.steps,
        "maps": args.maps,
        "seed": args.seed,
        "selective": args.selective,
        "precision": "highest",
        "observer_model": args.observer_model,
        "observer_layer": observer_layer,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    columns = MEASURES + TWO_CHOICE + (FEATURES if args.observer_model is not None else ())
    extra = " observers disagree |" if args.observer_model is not None else ""
    print(f"\n| layer | style | {' | '.join(columns)} | top rank | image-steps/s |{extra}")
    print("|" + "---|" * (len(columns) + 4 + bool(extra)))
    for r in rows:
        cells = " | ".join(fmt(r[m]) for m in columns)
        speed = f"{r['image_steps_per_second']:.0f}"
        note = f" {disagreement(r['observer_agreement'])} |" if extra else ""
        print(f"| {r['layer']} | {r['style']} | {cells} | {r['frac_selectivity_rank_0']} | {speed} |{note}")
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
