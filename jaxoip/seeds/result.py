"""The result of a seed comparison: every number, per-layer tables with CIs and nulls, headlines, JSON."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
import pandas as pd
from jaxtyping import Float

if TYPE_CHECKING:
    from jaxoip.seeds.config import CompareConfig

COMPARISONS = ("real", "shuffled", "untrained")


@dataclasses.dataclass
class SeedComparison:
    """All numbers of a seed comparison.

    `pairs_table`: point estimates, one row per (layer, comparison, pair, metric). `image_bootstrap`:
    per (layer, comparison) a DataFrame of bootstrap replicates (rows) of the mean over pairs.
    `details`: per (layer, comparison, pair) the matched channels and correlations; `correlations`:
    per (layer, comparison, pair) the full correlation matrix. `oip`: per pair the matched maps and
    every OIP measure per matched map (see `compare_oips.pair_oip_measures`); `oip_images`,
    `oip_objective`, `oip_live`: per (model index, map) its OIPs, their objective and live starts.
    """

    names: tuple[str, ...]
    model_info: list[dict]
    pairs: tuple[tuple[int, int], ...]
    config: CompareConfig
    pairs_table: pd.DataFrame
    image_bootstrap: dict
    details: dict
    correlations: dict
    live: dict  # (layer, model index) -> live mask
    null95: dict  # layer -> 95th percentile of matched correlations with shuffled images
    samples: dict  # layer -> (images, positions per image)
    oip: dict  # pair -> dict with maps and similarity arrays
    oip_images: dict  # (model index, map) -> (restarts, H, W, 1) images, standardized
    oip_objective: dict
    seconds: float = 0.0
    oip_live: dict = dataclasses.field(default_factory=dict)
    used: dict = dataclasses.field(default_factory=dict)  # The settings as run: test images, blocks, maps per pair.

    def metric_names(self, layer: str) -> list[str]:
        t = self.pairs_table
        return list(dict.fromkeys(t[t["layer"] == layer]["metric"]))

    def _interval(self, values: np.ndarray) -> tuple[float, float]:
        a = (1 - self.config.ci) / 2
        return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))

    def pair_bootstrap(self, layer: str, comparison: str, metric: str) -> Float[np.ndarray, " replicates"]:
        """Replicates of the mean over seed pairs, resampling pairs with replacement."""
        t = self.pairs_table
        v = t[(t["layer"] == layer) & (t["comparison"] == comparison) & (t["metric"] == metric)]["value"].to_numpy()
        rng = np.random.default_rng(self.config.seed + 1)
        idx = rng.integers(0, len(v), size=(self.config.bootstrap, len(v)))
        return v[idx].mean(1)

    def table(self, layer: str) -> pd.DataFrame:
        """Per metric: mean over pairs, CI over images and over pairs, and the two nulls (means over pairs)."""
        t = self.pairs_table[self.pairs_table["layer"] == layer]
        means = t.groupby(["comparison", "metric"], sort=False)["value"].mean()
        rows = []
        for metric in self.metric_names(layer):
            row = {"metric": metric, "mean": means.get(("real", metric), np.nan)}
            boot = self.image_bootstrap.get((layer, "real"))
            if boot is not None and metric in boot:
                row["ci_images_lo"], row["ci_images_hi"] = self._interval(boot[metric].to_numpy())
            else:
                row["ci_images_lo"] = row["ci_images_hi"] = np.nan
            row["ci_pairs_lo"], row["ci_pairs_hi"] = self._interval(self.pair_bootstrap(layer, "real", metric))
            for c in ("shuffled", "untrained"):
                row[f"null_{c}"] = means.get((c, metric), np.nan)
                boot = self.image_bootstrap.get((layer, c))
                if boot is not None and metric in boot:
                    row[f"null_{c}_ci_lo"], row[f"null_{c}_ci_hi"] = self._interval(boot[metric].to_numpy())
            rows.append(row)
        return pd.DataFrame(rows)

    def headline(self, layer: str) -> str:
        """A few words per layer: the same features? in the same order?"""
        tab = self.table(layer).set_index("metric")
        g = lambda metric, col="mean": float(tab.loc[metric, col])
        nulls = max(g("matched_corr", "null_shuffled"), g("matched_corr", "null_untrained"))
        lo = g("matched_corr", "ci_images_lo")
        frac = g("frac_above_null95")
        if lo > nulls and frac >= 0.9:
            same = "yes"
        elif lo > nulls:
            same = "partly"
        else:
            same = "no"
        live = (g("live_a") + g("live_b")) / 2
        in_place, chance = g("in_place"), g("in_place_chance")
        if in_place > 0.5 * live:
            order = "yes"
        else:
            order = "partly" if in_place > chance + 3 * math.sqrt(max(chance, 1)) else "no"
        text = (
            f"{layer}: same features? {same} - matched r = {g('matched_corr'):.2f} "
            f"[{lo:.2f}, {g('matched_corr', 'ci_images_hi'):.2f}] vs null {g('matched_corr', 'null_shuffled'):.2f} "
            f"(shuffled images) / {g('matched_corr', 'null_untrained'):.2f} (untrained); "
            f"{frac:.0%} of matched channels above the null's 95th percentile ({self.null95[layer]:.2f}); "
            f"CKA {g('cka_linear'):.2f} (debiased {g('cka_debiased'):.2f}, "
            f"untrained {g('cka_debiased', 'null_untrained'):.2f}).\n"
            f"  same order? {order} - {in_place:.1f} of {live:.0f} live channels stay in place "
            f"({chance:.1f} by chance); diagonal r = {g('diagonal_corr'):.2f} vs matched {g('matched_corr'):.2f}."
        )
        if "kernel_cosine" in tab.index:
            text += (
                f"\n  matched 3x3 kernels: cosine {g('kernel_cosine'):.2f} "
                f"(untrained {g('kernel_cosine', 'null_untrained'):.2f})."
            )
        if "oip_shift" in tab.index or "oip_xact" in tab.index:
            text += "\n  OIPs of matched maps (ceiling: own restarts / floor: random map pairs):"
            for key, what in (
                ("oip_shift", "shift-invariant r"),
                ("oip_shift_unsigned", "same, sign-free"),
                ("oip_xact", "cross-activation"),
                ("oip_pixel", "pixel r"),
            ):
                if key in tab.index:
                    ceil, floor = (
                        f"{g(k):.2f}" if k in tab.index else "n/a" for k in (f"{key}_ceiling", f"{key}_floor")
                    )
                    text += f" {what} {g(key):.2f} ({ceil} / {floor});"
            if "oip_silent_starts" in tab.index:
                text += f" {g('oip_silent_starts'):.1f} silent starts per pair left out."
        return text

    def to_dict(self) -> dict:
        """Every number, JSON-ready (no NaN: undefined values are None)."""

        def clean(v):
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, np.ndarray):
                return clean(v.tolist())
            if isinstance(v, (np.floating, float)):
                return float(v) if math.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, np.bool_):
                return bool(v)
            return v

        out = {
            "config": dataclasses.asdict(self.config),
            "models": self.model_info,
            "pairs": [list(p) for p in self.pairs],
            "seconds": self.seconds,
            "backend": jax.default_backend(),
            "used": self.used,
            "layers": {},
        }
        for layer in self.config.layers:
            lay = {
                "samples": {"images": self.samples[layer][0], "positions_per_image": self.samples[layer][1]},
                "null95_matched_corr": self.null95[layer],
                "dead_channels": {self.names[i]: int((~self.live[(layer, i)]).sum()) for i in range(len(self.names))},
                "table": self.table(layer).to_dict(orient="records"),
                "pairs": {},
                "image_bootstrap": {
                    c: self.image_bootstrap[(layer, c)].to_dict(orient="list")
                    for c in COMPARISONS
                    if (layer, c) in self.image_bootstrap
                },
            }
            t = self.pairs_table[self.pairs_table["layer"] == layer]
            for (c, a, b), g in t.groupby(["comparison", "a", "b"], sort=False):
                key = f"{self.names[a]} vs {self.names[b]}"
                d = self.details[(layer, c, (a, b))]
                lay["pairs"].setdefault(key, {})[c] = {
                    "metrics": dict(zip(g["metric"], g["value"])),
                    "matched_a": d["a"],
                    "matched_b": d["b"],
                    "matched_corr": d["corr"],
                }
            out["layers"][layer] = lay
        if self.oip:
            out["oip"] = {f"{self.names[a]} vs {self.names[b]}": dict(o) for (a, b), o in self.oip.items()}
        return clean(out)


def shared_seeds(model_info: Sequence[dict]) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Pairs of models trained from one seed, as (a, b, seed), and the models whose seed is unknown."""
    seeds = [m.get("seed") for m in model_info]
    same = [
        (a, b, seeds[a])
        for a, b in itertools.combinations(range(len(seeds)), 2)
        if seeds[a] is not None and seeds[a] == seeds[b]
    ]
    return same, [i for i, s in enumerate(seeds) if s is None]


def seed_warnings(names: Sequence[str], model_info: Sequence[dict]) -> list[str]:
    """One sentence per pair of models that share their initialization, and one for unknown seeds."""
    same, unknown = shared_seeds(model_info)
    lines = [
        f"models {names[a]} and {names[b]} were initialized from the same seed ({s}): 'same order' is expected"
        for a, b, s in same
    ]
    if unknown:
        lines.append(
            f"the training seed of {', '.join(names[i] for i in unknown)} is unknown (no jaxoip training record): "
            "a shared initialization cannot be ruled out"
        )
    return lines
