"""Matplotlib figures: training history (more in later modules). Uses the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Saves and closes `fig`; writes to a temporary name first so a crash leaves no partial PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_history(history: dict, path: str | Path | None = None):
    """Loss and accuracy per epoch, training and test, like the study's live epoch plot."""
    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, history["loss"], label="training")
    ax_loss.plot(epochs, history["val_loss"], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.plot(epochs, history["accuracy"], label="training")
    ax_acc.plot(epochs, history["val_accuracy"], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def enhance_contrast(img, low: float = 2.0, high: float = 98.0):
    """Stretches the [low, high] percentiles of an image to [0, 1] (the study's contrast-enhanced view)."""
    img = np.asarray(img, np.float64)
    lo, hi = np.percentile(img, [low, high])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def oip_gallery(result, path=None, per_row: int = 8, exemplars=None):
    """All maps' best OIPs, each plain (pixel units, 0-255) and contrast-enhanced, labelled by map and objective.

    `exemplars`: optional {map index: array (k, H, W)} of dataset patches drawn to the right of each OIP.
    """
    best = result.best_images[..., 0]
    pixels = np.clip(result.standardization.to_pixels(best), 0, 255)
    objective = result.objective.max(axis=1)
    maps = result.map_indices
    k = max((len(v) for v in (exemplars or {}).values()), default=0)
    panels = 2 + k
    rows = -(-len(maps) // per_row)
    fig, axes = plt.subplots(
        rows, per_row * panels, figsize=(per_row * panels * 0.9, rows * 1.1), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for n, m in enumerate(maps):
        r, c = divmod(n, per_row)
        a_plain, a_enh = axes[r, c * panels], axes[r, c * panels + 1]
        a_plain.imshow(pixels[n], cmap="gray", vmin=0, vmax=255)
        a_enh.imshow(enhance_contrast(best[n]), cmap="gray", vmin=0, vmax=1)
        status = f"{objective[n]:.3g}" if objective[n] > 0 else "zero"
        a_plain.set_title(f"map {m}: {status}", fontsize=6, loc="left")
        for e, patch in enumerate((exemplars or {}).get(int(m), [])):
            axes[r, c * panels + 2 + e].imshow(patch, cmap="gray_r")
        if k and int(m) in (exemplars or {}):
            axes[r, c * panels + 2].set_title("data", fontsize=5, loc="left")
    fig.suptitle(
        f"Optimal input patterns of {result.layer_name}: plain and contrast-enhanced"
        + (", beside the test images' most active patches" if k else ""),
        fontsize=9,
    )
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    if path is not None:
        save_figure(fig, path, dpi=110)
    return fig


def snapshot_strip(result, map_index: int, path=None):
    """The best start of one map at the log-spaced snapshot steps, with its objective trace."""
    pos = int(np.flatnonzero(result.map_indices == map_index)[0])
    flat = pos * result.restarts + int(result.best_start[pos])
    snaps = result.oip.snapshots[flat, ..., 0]
    steps = result.oip.snapshot_steps
    trace = result.oip.traces[flat]
    fig, axes = plt.subplots(1, len(steps) + 1, figsize=(1.6 * (len(steps) + 1) + 1.5, 2.0))
    for ax, img, s in zip(axes, snaps, steps):
        ax.imshow(enhance_contrast(img), cmap="gray")
        ax.set_title(f"step {s + 1}\n{trace[s]:.3g}", fontsize=7)
        ax.axis("off")
    axes[-1].plot(np.arange(1, len(trace) + 1), trace)
    axes[-1].set(xscale="log", xlabel="step", title="objective")
    axes[-1].title.set_fontsize(8)
    fig.suptitle(f"{result.layer_name} map {map_index}: best of {result.restarts} starts", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
