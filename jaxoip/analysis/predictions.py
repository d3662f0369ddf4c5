"""Predictions on a whole split: class probabilities, misclassified and least sure images, confusions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from jaxtyping import ArrayLike, Float, Int

from jaxoip._check import check_type
from jaxoip.analysis.activations import dataset_activations, to_probabilities
from jaxoip.data.mnist import MNIST, check_data
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import TrainedModel, check_trained, layer_specs
from jaxoip.numerics import DEFAULT_PRECISION, Precision


@dataclasses.dataclass(frozen=True)
class Predictions:
    """The model's class probabilities for every image of a split."""

    split: str
    labels: Int[np.ndarray, " n"]
    probabilities: Float[np.ndarray, "n classes"]

    @property
    def predicted(self) -> Int[np.ndarray, " n"]:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> Float[np.ndarray, " n"]:
        return self.probabilities.max(axis=1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean())

    def confusion(self) -> Int[np.ndarray, "classes classes"]:
        return confusion_matrix(self.labels, self.predicted, self.probabilities.shape[1])

    def table(self, indices: Int[ArrayLike, " k"]) -> pd.DataFrame:
        """One row per image: its label, the prediction, their probabilities."""
        idx = np.asarray(indices, np.int64)
        p = self.probabilities[idx]
        return pd.DataFrame(
            {
                "image": [f"{self.split}:{i}" for i in idx],
                "index": idx,
                "label": self.labels[idx],
                "predicted": p.argmax(axis=1),
                "p_predicted": p.max(axis=1),
                "p_label": p[np.arange(len(idx)), self.labels[idx]],
            }
        )


def predict_split(
    trained: TrainedModel, data: MNIST, split: str = "test", precision: Precision = DEFAULT_PRECISION
) -> Predictions:
    """Class probabilities for a whole split in one jitted batched pass."""
    check_trained(trained)
    images, labels = check_data(data).split(split)
    last = layer_specs(trained.config)[-1].name
    probs = dataset_activations(trained, data, last, split, to_probabilities(trained), precision=precision)
    return Predictions(split, np.asarray(labels), np.asarray(probs, np.float64))


def misclassified(pred: Predictions, n: int | None = None) -> pd.DataFrame:
    """The wrongly classified images, the most confidently wrong first (at most `n`)."""
    check_type("pred", pred, Predictions, " (from predict_split)")
    wrong = np.flatnonzero(pred.predicted != pred.labels)
    wrong = wrong[np.argsort(-pred.confidence[wrong], kind="stable")]
    return pred.table(wrong[:n] if n is not None else wrong)


def least_confident(pred: Predictions, n: int = 10) -> pd.DataFrame:
    """The `n` images whose most probable class has the lowest probability, least sure first."""
    check_type("pred", pred, Predictions, " (from predict_split)")
    order = np.argsort(pred.confidence, kind="stable")[:n]
    table = pred.table(order)
    table["correct"] = table["label"] == table["predicted"]
    return table


def confusion_matrix(
    labels: Int[ArrayLike, " n"], predicted: Int[ArrayLike, " n"], n_classes: int = 10
) -> Int[np.ndarray, "classes classes"]:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    if labels.shape != predicted.shape:
        raise JaxoipError(f"labels {labels.shape} and predictions {predicted.shape} differ in shape")
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def most_confused(cm: Int[ArrayLike, "classes classes"], n: int = 5) -> pd.DataFrame:
    """The `n` largest off-diagonal counts: true class, predicted class, count, share of the true class,
    and `pair_count`, the confusions of the two classes in both directions."""
    cm = np.asarray(cm)
    off = cm * (1 - np.eye(len(cm), dtype=cm.dtype))
    true, pred = np.unravel_index(np.argsort(-off, axis=None, kind="stable"), cm.shape)
    keep = off[true, pred] > 0
    true, pred = true[keep][:n], pred[keep][:n]
    rows = np.maximum(cm.sum(axis=1), 1)
    return pd.DataFrame(
        {
            "true": true,
            "predicted": pred,
            "count": cm[true, pred],
            "share": cm[true, pred] / rows[true],
            "pair_count": cm[true, pred] + cm[pred, true],
        }
    )
