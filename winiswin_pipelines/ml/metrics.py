"""Scores of class probabilities against the triple-barrier label, and the class-prior baseline.

Metrics are unweighted (each labelled row counts once), so the model and the baseline are measured
the same way; the uniqueness weights shape training only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support, roc_auc_score

from winiswin_pipelines.ml.model import CLASSES


@dataclass(frozen=True)
class Scores:
    """How well probabilities predict the labels of some rows; per-class values keyed by class."""

    rows: int
    log_loss: float
    accuracy: float
    precision: dict[int, float]
    recall: dict[int, float]
    auc: dict[int, float | None]  # one-vs-rest; None when the rows hold only one side of a class
    support: dict[int, int]
    confusion: np.ndarray  # rows: true class, columns: predicted class, both in CLASSES order


def score(labels: pd.Series | np.ndarray, proba: np.ndarray) -> Scores:
    """Scores of `proba` (one column per class of CLASSES) against `labels`."""
    y = np.asarray(labels)
    if len(y) == 0:
        raise ValueError("no rows to score")
    predicted = np.asarray(CLASSES)[np.argmax(proba, axis=1)]
    precision, recall, _, support = precision_recall_fscore_support(
        y, predicted, labels=list(CLASSES), zero_division=0)
    return Scores(
        rows=len(y),
        log_loss=float(log_loss(y, proba, labels=list(CLASSES))),
        accuracy=float(np.mean(predicted == y)),
        precision=dict(zip(CLASSES, map(float, precision), strict=True)),
        recall=dict(zip(CLASSES, map(float, recall), strict=True)),
        auc={c: _one_vs_rest_auc(y == c, proba[:, k]) for k, c in enumerate(CLASSES)},
        support=dict(zip(CLASSES, map(int, support), strict=True)),
        confusion=confusion_matrix(y, predicted, labels=list(CLASSES)),
    )


def _one_vs_rest_auc(is_class: np.ndarray, proba: np.ndarray) -> float | None:
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, proba))


def class_prior(labels: pd.Series | np.ndarray) -> np.ndarray:
    """Each class's share of `labels`, in CLASSES order, with one pseudo-count per class (Laplace) so
    a class absent from the training rows costs a finite loss when it shows up later."""
    y = np.asarray(labels)
    counts = np.array([np.sum(y == c) for c in CLASSES], dtype=np.float64) + 1.0
    return counts / counts.sum()


def prior_log_loss(train_labels: pd.Series | np.ndarray, test_labels: pd.Series | np.ndarray) -> float:
    """The log loss on `test_labels` of always predicting the class prior of `train_labels`: the bar a
    model must clear to have learnt anything from the features."""
    prior = class_prior(train_labels)
    return float(log_loss(np.asarray(test_labels), np.tile(prior, (len(test_labels), 1)), labels=list(CLASSES)))


def label_balance(labels: pd.Series | np.ndarray) -> dict[int, int]:
    """Rows per class, in CLASSES order."""
    y = np.asarray(labels)
    return {c: int(np.sum(y == c)) for c in CLASSES}
