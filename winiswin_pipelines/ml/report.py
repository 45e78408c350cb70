"""A training result as Markdown tables, for Dagster's metadata and the registry's artifacts."""

from __future__ import annotations

import math

import pandas as pd

from winiswin_pipelines.ml.metrics import Scores
from winiswin_pipelines.ml.model import CLASSES
from winiswin_pipelines.ml.training import TrainingResult

CLASS_NAMES = {-1: "-1 (lower)", 0: "0 (vertical)", 1: "1 (upper)"}
_BAR_WIDTH = 20


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def scores_table(result: TrainingResult) -> str:
    """Log loss and accuracy: purged CV, out of sample, and the class prior out of sample."""
    cv, oos = result.cv, result.oos
    folds = ", ".join(_number(loss) for loss in result.cv_fold_log_loss)
    return "\n".join([
        "| | purged CV (development rows) | out of sample (walk-forward) | class prior (out of sample) |",
        "|---|---:|---:|---:|",
        f"| log loss | {_number(cv.log_loss)} | {_number(oos.log_loss)} | {_number(result.baseline_log_loss)} |",
        f"| accuracy | {cv.accuracy:.1%} | {oos.accuracy:.1%} | |",
        f"| rows | {cv.rows:,} | {oos.rows:,} | {oos.rows:,} |",
        f"| log loss per fold | {folds} | | |",
    ])


def per_class_table(scores: Scores) -> str:
    """Support, precision, recall and one-vs-rest AUC per class."""
    lines = ["| class | rows | precision | recall | AUC (one vs rest) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {CLASS_NAMES[c]} | {scores.support[c]:,} | {scores.precision[c]:.3f} | {scores.recall[c]:.3f} | "
              f"{_number(scores.auc[c], 3)} |" for c in CLASSES]
    return "\n".join(lines)


def confusion_table(scores: Scores) -> str:
    """Rows: the true class; columns: the predicted class (the most probable)."""
    lines = ["| true \\ predicted | " + " | ".join(CLASS_NAMES[c] for c in CLASSES) + " |",
             "|---|" + "---:|" * len(CLASSES)]
    lines += [f"| {CLASS_NAMES[c]} | " + " | ".join(f"{n:,}" for n in scores.confusion[i]) + " |"
              for i, c in enumerate(CLASSES)]
    return "\n".join(lines)


def importance_table(importance: pd.DataFrame) -> str:
    """Gain share and splits per feature, with a bar for the share (a chart that Markdown can draw)."""
    lines = ["| feature | gain share | splits | |", "|---|---:|---:|---|"]
    for row in importance.itertuples():
        bar = "█" * round(row.gain_share * _BAR_WIDTH)
        lines.append(f"| {row.feature} | {row.gain_share:.1%} | {row.splits:,} | {bar} |")
    return "\n".join(lines)


def label_balance_table(balance: dict[int, int]) -> str:
    total = sum(balance.values()) or 1
    lines = ["| label | rows | share |", "|---|---:|---:|"]
    lines += [f"| {CLASS_NAMES[c]} | {n:,} | {n / total:.1%} |" for c, n in balance.items()]
    return "\n".join(lines)


def windows_table(result: TrainingResult) -> str:
    """The label starts each part of the protocol covers."""
    lines = ["| part | first label start | last label start | last label end | rows |", "|---|---|---|---|---:|"]
    for name, window in (("kept model (every row)", result.window), ("development (CV)", result.development),
                         ("out of sample", result.out_of_sample)):
        lines.append(f"| {name} | {window.start} | {window.end} | {window.last_label_end} | {window.rows:,} |")
    return "\n".join(lines)


def full_report(result: TrainingResult) -> str:
    """Every table, as one Markdown document (stored with the model in the registry)."""
    sections = [
        ("Scores", scores_table(result)), ("Per class, out of sample", per_class_table(result.oos)),
        ("Confusion matrix, out of sample", confusion_table(result.oos)),
        ("Per class, purged CV", per_class_table(result.cv)),
        ("Feature importance", importance_table(result.importance)),
        ("Label balance", label_balance_table(result.label_balance)), ("Windows", windows_table(result)),
    ]
    return "\n\n".join(f"## {title}\n\n{table}" for title, table in sections) + "\n"
