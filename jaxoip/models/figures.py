"""Figures of training, drawn with matplotlib's object API (`jaxoip.figures`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxoip.figures import save_figure, subplots


def plot_history(history: dict, path: str | Path | None = None):
    """Loss and accuracy per epoch, training and test, like the study's live epoch plot."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    # Markers: a line through a single epoch is invisible; up to about 50 epochs they also show each one.
    style = dict(marker="o", markersize=4 if len(epochs) <= 50 else 0)
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, history["loss"], label="training", **style)
    ax_loss.plot(epochs, history["val_loss"], label="test", **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.plot(epochs, history["accuracy"], label="training", **style)
    ax_acc.plot(epochs, history["val_accuracy"], label="test", **style)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) == 1:  # One point: one epoch's width around it, one tick, rather than an empty range.
            ax.set(xlim=(0.5, 1.5), xticks=[1])
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
