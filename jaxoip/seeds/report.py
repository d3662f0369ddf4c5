"""The seed comparison's report: report.md, results.json, metrics.csv, correlations.npz and figures.

`write_report` writes them all into one folder atomically (a temporary folder renamed into place).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from jaxoip._check import check_type
from jaxoip._io import prepare_output
from jaxoip.seeds.figures import plot_matched_oips, plot_matching, plot_oip_measures
from jaxoip.seeds.result import SeedComparison, seed_warnings


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


METRIC_TEXT = {
    "live_a": "live channels, first model",
    "live_b": "live channels, second model",
    "dead_a": "dead channels, first model",
    "dead_b": "dead channels, second model",
    "matched_corr": "mean matched r (Hungarian)",
    "diagonal_corr": "mean r, same channel index",
    "in_place": "channels matched to their own index",
    "in_place_chance": "... expected by chance",
    "semi_corr": "mean best-partner r (semi-matching)",
    "semi_duplicates": "channels sharing a best partner",
    "frac_above_null95": "fraction matched r > null's 95th pct",
    "cka_linear": "linear CKA",
    "cka_debiased": "linear CKA, debiased",
    "kernel_cosine": "cosine of matched 3x3 kernels",
    "oip_shift": "OIP shift-invariant r, matched maps",
    "oip_shift_ceiling": "... own restarts (ceiling)",
    "oip_shift_floor": "... random map pairs (floor)",
    "oip_shift_unsigned": "OIP shift-invariant |r| (sign-free), matched maps",
    "oip_shift_unsigned_ceiling": "... own restarts (ceiling)",
    "oip_shift_unsigned_floor": "... random map pairs (floor)",
    "oip_xact": "OIP cross-activation, matched maps (both ways)",
    "oip_xact_ab": "... second model's map on the first's OIPs",
    "oip_xact_ba": "... first model's map on the second's OIPs",
    "oip_xact_ceiling": "... own restarts (ceiling)",
    "oip_xact_floor": "... other maps' OIPs (floor)",
    "oip_pixel": "OIP pixel r, matched maps",
    "oip_pixel_ceiling": "... own restarts (ceiling)",
    "oip_pixel_floor": "... random map pairs (floor)",
    "oip_pixel_same_start": "OIP pixel r, matched maps, same start",
    "oip_both_live": "fraction of matched maps with live starts on both sides",
    "oip_silent_starts": "silent starts left out (both models)",
}

# Per-map columns of the OIP table: (key, header).
OIP_COLUMNS = (
    ("corr", "act. r"),
    ("shift", "shift r"),
    ("shift_ceiling", "ceil."),
    ("shift_floor", "floor"),
    ("shift_unsigned", "shift abs(r)"),
    ("xact_ab", "xact a→b"),
    ("xact_ba", "xact b→a"),
    ("xact_ceiling", "ceil."),
    ("xact_floor", "floor"),
    ("pixel", "pixel r"),
)


def _count_text(counts) -> str:
    """'16', or '14 to 16' where pairs differ."""
    lo, hi = min(counts, default=0), max(counts, default=0)
    return f"{lo}" if lo == hi else f"{lo} to {hi}"


def markdown_report(result: SeedComparison, command: str | None = None) -> str:
    cfg, used = result.config, result.used
    lines = ["# Seed comparison: the same filters, in the same order?", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"**Warning**: {w}." for w in seed_warnings(result.names, result.model_info)]
    if lines[-1] != "":
        lines.append("")
    lines += ["| model | seed | epochs | train subset | test accuracy |", "|---|---|---|---|---|"]
    for m in result.model_info:
        acc = m["test_accuracy"]
        lines.append(
            f"| {m['name']} | {m['seed']} | {m['epochs']} | {m['train_subset'] or 'all'} | "
            f"{'n/a' if acc is None else f'{acc:.4f}'} |"
        )
    lines += [
        "",
        (
            f"{len(result.pairs)} pairs. Features: post-ReLU activations on the test images, spatial positions as "
            f"samples. "
            f"Nulls: **shuffled** = the same pair with the test images shuffled for the second model; "
            f"**untrained** = the first model against an untrained network of the same architecture. "
            f"CIs ({cfg.ci:.0%}): bootstrap over images ({used['bootstrap']} replicates of {used['blocks']} blocks of "
            f"the {used['test_images']} test images) and "
            f"over seed pairs (pairs sharing a model are not independent: read it as a rough spread). "
            f"Dead channels (constant on the samples) are left out of every matching. "
            f"Precision of every compiled pass (features and OIP search): **{cfg.oip.precision}**."
        ),
        "",
    ]
    for layer in cfg.layers:
        n, k = result.samples[layer]
        lines += [
            f"## {layer}",
            "",
            (
                f"{n} images x {k} positions = {n * k} samples; "
                f"null 95th percentile of matched r: {result.null95[layer]:.3f}."
            ),
            "",
        ]
        lines += ["```", result.headline(layer), "```", ""]
        lines += [
            "| metric | mean over pairs | CI (images) | CI (seed pairs) | null: shuffled | null: untrained |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in result.table(layer).iterrows():
            name = METRIC_TEXT.get(r["metric"], r["metric"].replace("frac_above_", "fraction matched r > "))
            ci_i = f"[{_fmt(r['ci_images_lo'])}, {_fmt(r['ci_images_hi'])}]"
            ci_i = ci_i if math.isfinite(r["ci_images_lo"]) else "n/a"
            ci_p = f"[{_fmt(r['ci_pairs_lo'])}, {_fmt(r['ci_pairs_hi'])}]"
            lines.append(
                f"| {name} | {_fmt(r['mean'])} | {ci_i} | {ci_p} | "
                f"{_fmt(r['null_shuffled'])} | {_fmt(r['null_untrained'])} |"
            )
        lines += ["", f"![{layer} correlation before and after matching](corr_{layer}.png)", ""]
    if result.oip:
        lines += oip_section(result)
    return "\n".join(lines) + "\n"


def oip_section(result: SeedComparison) -> list[str]:
    """The OIP part of report.md: what was searched and measured, and every pair's matched maps."""
    cfg = result.config
    source = (
        f"the improved search (`scan_maps`: best recipe per map, screened starts; options "
        f"{dict(cfg.oip_scan_options) or 'none'})"
        if cfg.oip_source == "scan"
        else f"the plain search from the same starts for every map ('{cfg.oip_recipe}' recipe)"
    )
    lines = [
        f"## OIPs of matched {cfg.oip_layer} maps",
        "",
        (
            f"{_count_text(result.used['oip_maps'].values())} matched maps per pair (evenly spaced in the ranking of "
            f"matched r; up to {cfg.oip_maps} asked, at most the live matched maps), {cfg.oip_restarts} "
            f"starts each from {source}, {cfg.oip.steps} steps. A start whose objective stayed at zero (a silent "
            f"map) is left out of every measure; a matched map without a live start on both sides is left out of "
            f"the means and marked below. Measures, averaged over pairs of different starts:"
        ),
        "",
        (
            f"- **shift r**: the maximum over translations of up to {cfg.oip_max_shift} pixels of the Pearson "
            f"correlation of the two OIPs over their overlap (1 for a translated copy, also with its contrast "
            f"scaled); **shift abs(r)**: the same with the sign free (1 also for a contrast-inverted copy)."
        ),
        (
            "- **xact** (cross-activation): the mean response of one model's matched map to the other model's OIPs, "
            "divided by its mean response to its own OIPs (1: as strong as to its own); a→b is the second model's "
            "map on the first model's OIPs."
        ),
        "- **pixel r**: the plain pixel correlation (not shift-invariant).",
        (
            "- **ceiling**: a map against its own other restarts (for xact: each own restart against the mean of "
            "the others); **floor**: a map against the partners of the other matched maps."
        ),
        "",
        f"![OIP measures](oip_measures_{cfg.oip_layer}.png)",
        "",
        f"![matched OIPs](oips_{cfg.oip_layer}.png)",
        "",
    ]
    cols = [(k, h) for k, h in OIP_COLUMNS if all(k in o for o in result.oip.values())]
    for (a, b), o in result.oip.items():
        lines += [
            f"### {result.names[a]} vs {result.names[b]}",
            "",
            "| map a | map b | live starts a, b | " + " | ".join(h for _, h in cols) + " |",
            "|---|---|---|" + "---|" * len(cols),
        ]
        r = cfg.oip_restarts
        for j in range(len(o["maps_a"])):
            live = f"{r - int(o['silent_starts_a'][j])}, {r - int(o['silent_starts_b'][j])}"
            if not o["both_live"][j]:
                live += " (left out)"
            values = " | ".join(_fmt(float(o[k][j])) for k, _ in cols)
            lines.append(f"| {int(o['maps_a'][j])} | {int(o['maps_b'][j])} | {live} | {values} |")
        lines.append("")
    return lines


def write_report(
    result: SeedComparison, out: str | os.PathLike, command: str | None = None, overwrite: bool = False
) -> Path:
    """Writes the report into the new or empty folder `out` (see `write_report_files`), through
    `jaxoip._io.prepare_output`: a folder holding anything jaxoip did not write is refused."""
    check_type("the comparison", result, SeedComparison, " (from jaxoip.compare_models)")
    with prepare_output(out, "write_report", {}, overwrite=overwrite) as o:
        write_report_files(result, o.staging, command)
    return o.path


def write_report_files(result: SeedComparison, folder: str | os.PathLike, command: str | None = None) -> None:
    """Writes report.md, results.json, metrics.csv (per pair), correlations.npz and figures into `folder`."""
    tmp = Path(folder)
    (tmp / "report.md").write_text(markdown_report(result, command))
    (tmp / "results.json").write_text(json.dumps(result.to_dict(), indent=1))
    result.pairs_table.to_csv(tmp / "metrics.csv", index=False)
    arrays = {
        f"{layer}__{c}__{result.names[a]}__{result.names[b]}".replace(" ", "_"): v
        for (layer, c, (a, b)), v in result.correlations.items()
    }
    np.savez_compressed(tmp / "correlations.npz", **arrays)
    for layer in result.config.layers:
        plot_matching(result, layer, path=tmp / f"corr_{layer}.png")
    if result.oip:
        plot_matched_oips(result, path=tmp / f"oips_{result.config.oip_layer}.png")
        plot_oip_measures(result, path=tmp / f"oip_measures_{result.config.oip_layer}.png")
