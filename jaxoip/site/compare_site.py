"""The seed comparison's static site: `index.html` with the report's models, headlines, tables and figures, and
one page per pair of models with every matched map's OIPs (and exemplars) side by side with their correlation.

Written next to the report's files (`jaxoip.seeds.report.write_report_files`), which it links.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from jaxtyping import Float

from jaxoip.site import images as im
from jaxoip.site.render import copy_static, environment
from jaxoip.site.scan_site import SITE_DIR, TILE, fmt, plain

# The per-map measures a pair page shows beside the OIPs, with their headings.
MEASURES = (("corr", "activation r"), ("shift", "OIP shift r"), ("shift_unsigned", "sign-free"), ("xact", "cross-act."))


def best_oip(result, model: int, map_index: int) -> Float[np.ndarray, "H W C"]:
    """The OIP of the live start with the highest objective (any start if none is live), standardized."""
    key = (model, int(map_index))
    obj = np.asarray(result.oip_objective[key], np.float64)
    live = np.asarray(result.oip_live.get(key, obj > 0), bool)
    return result.oip_images[key][int(np.argmax(np.where(live, obj, -np.inf) if live.any() else obj))]


def _table(df) -> dict:
    cols = list(df.columns)
    return {"columns": cols, "rows": [[fmt(plain(r[c])) for c in cols] for r in df.to_dict("records")]}


def _figures(folder: Path, names: list[str]) -> list[str]:
    return [n for n in names if (folder / n).exists()]


def _exemplar_sheet(exemplars, m: int, path: Path) -> bool:
    """Writes map `m`'s exemplar patches side by side; False when it has none (dead on data)."""
    patches = list(exemplars.patches[m])
    if not patches:
        return False
    ph, pw = max(p.shape[0] for p in patches), max(p.shape[1] for p in patches)
    tiles = [np.full((ph, pw), np.nan, np.float32) for _ in patches]
    for t, p in zip(tiles, patches):
        t[: p.shape[0], : p.shape[1]] = im.pixels01(p)
    im.write_png(im.strip(tiles), path)
    return True


def write_compare_site(result, folder: str | os.PathLike, exemplars: dict | None = None) -> Path:
    """Writes the site of `result` (a `SeedComparison`) into `folder`; returns the path of its `index.html`.

    `exemplars`: optional {model index: `find_exemplars` of `result.config.oip_layer`}, shown under the OIPs.
    """
    folder = Path(folder)
    site = folder / SITE_DIR
    (site / "img").mkdir(parents=True, exist_ok=True)
    copy_static(site)
    env = environment()
    names = list(result.names)
    layer_oip = result.config.oip_layer
    pages = []
    for a, b in result.pairs:
        if (a, b) not in result.oip:
            continue
        page = f"pair_{a}_{b}.html"
        pages.append({"page": f"{SITE_DIR}/{page}", "a": names[a], "b": names[b]})
        o = result.oip[(a, b)]
        rows = []
        for j, (ma, mb) in enumerate(zip(o["maps_a"], o["maps_b"])):
            row = {"map_a": int(ma), "map_b": int(mb), "live": bool(o["both_live"][j])}
            for side, model, m in (("a", a, int(ma)), ("b", b, int(mb))):
                f = f"img/{a}_{b}_{j}_{side}.png"
                im.write_png(im.enhanced(best_oip(result, model, m)), site / f)
                row[f"oip_{side}"] = f
                row[f"ex_{side}"] = None
                if exemplars is not None and model in exemplars:
                    e = f"img/{a}_{b}_{j}_{side}_exemplars.png"
                    row[f"ex_{side}"] = e if _exemplar_sheet(exemplars[model], m, site / e) else "dead"
            row["measures"] = [fmt(plain(np.asarray(o[k])[j])) if k in o else "" for k, _ in MEASURES]
            rows.append(row)
        size = best_oip(result, a, int(o["maps_a"][0])).shape[0] * TILE if rows else 0
        (site / page).write_text(
            env.get_template("compare_pair.html").render(
                static="",
                root="../",
                layer=layer_oip,
                a=names[a],
                b=names[b],
                measures=[t for _, t in MEASURES],
                rows=rows,
                size=size,
                exemplars=exemplars is not None,
            ),
            encoding="utf-8",
        )
    layers = []
    for layer in result.config.layers:
        layers.append(
            {
                "name": layer,
                "headline": result.headline(layer),
                "table": _table(result.table(layer)),
                "figures": _figures(folder, [f"corr_{layer}.png"]),
            }
        )
    oip_figures = _figures(folder, [f"oip_measures_{layer_oip}.png", f"oips_{layer_oip}.png"]) if layer_oip else []
    info = [{k: fmt(plain(v)) for k, v in m.items()} for m in result.model_info]
    (folder / "index.html").write_text(
        env.get_template("compare_index.html").render(
            static=f"{SITE_DIR}/",
            root="",
            names=names,
            models=info,
            info_columns=list(info[0]) if info else [],
            layers=layers,
            oip_layer=layer_oip,
            oip_figures=oip_figures,
            pairs=pages,
            files=_figures(folder, ["report.md", "results.json", "metrics.csv", "correlations.npz"]),
            seconds=fmt(result.seconds),
        ),
        encoding="utf-8",
    )
    return folder / "index.html"
