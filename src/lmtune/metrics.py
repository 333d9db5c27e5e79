"""Evaluation metrics for text classifiers and regressors, and the confusion-matrix plot.

Every metric comes from scikit-learn or scipy; the one formula written here is the expected
calibration error, which scikit-learn lacks. The functions are pure: numpy arrays in, a dict of
plain Python values out (floats, ints, lists, dicts, None), so `json.dumps` takes the result as is.
A metric that is undefined on the given data (ROC-AUC with one class, a correlation with a constant
side) is None, never NaN.

Does not import torch, does not compute losses, does not print and does not log: the stages turn
logits into probabilities and write the dicts to `metrics.json` / `metrics.jsonl`. Malformed inputs
(wrong shapes, labels out of range, logits instead of probabilities) are caller bugs and raise
`ValueError`, not an `LmtuneError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    matthews_corrcoef,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    roc_auc_score,
)

# The metric that picks `best/` when the config names none, per task type.
SELECTION_DEFAULTS: dict[str, str] = {
    "single_label": "f1_macro",
    "multi_label": "f1_micro",
    "regression": "pearson",
}

# Metrics where smaller is better; every other metric (accuracy, F1, MCC, AUC, correlations) is
# better when larger.
_LOWER_IS_BETTER = frozenset({"mse", "mae", "rmse", "loss", "ece", "hamming_loss"})

ECE_BINS = 15  # equal-width confidence bins on [0, 1], as in Guo et al. (2017)


def greater_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` means a better model.

    Args:
        metric: a metric name as it appears in a metrics dict (`f1_macro`, `mse`, ...). Names that
            end in `_loss` (`eval_loss`, `train_loss`) count as losses.

    Returns:
        False for mse, mae, rmse, loss, ece, hamming_loss and any `*_loss`; True otherwise.
    """
    return not (metric in _LOWER_IS_BETTER or metric.endswith("_loss"))


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Metrics for single-label classification, with the prediction the argmax of `probs`.

    Macro averages are over the classes that occur in `y_true` or in the predictions, so a class
    that a small evaluation split happens to lack does not count as an F1 of 0; `per_class` and
    `confusion_matrix` still list every class. A class that is never predicted has precision 0
    (scikit-learn's `zero_division=0`), without a warning.

    Args:
        y_true: (n,) integer class ids in [0, k).
        probs: (n, k) class probabilities (softmax outputs, each in [0, 1]).
        labels: the k class names, in class-id order.

    Returns:
        A dict with `n`, `accuracy`, `precision_macro`, `recall_macro`, `f1_macro`,
        `precision_weighted`, `recall_weighted`, `f1_weighted`, `mcc`, `roc_auc` (binary tasks with
        both classes in `y_true`, from the class-1 probability; None otherwise), `ece` (see
        `expected_calibration_error`), `per_class` ({label: {precision, recall, f1, support}}) and
        `confusion_matrix` (k lists of k counts; row = true class, column = predicted class).

    Raises:
        ValueError: the shapes disagree, `labels` has duplicates, a class id is outside [0, k), or
            `probs` holds values outside [0, 1].
    """
    y_true, probs = _check_classification_inputs(y_true, probs, labels)
    k = probs.shape[1]
    y_pred = probs.argmax(axis=1)  # (n,)

    result: dict[str, Any] = {
        "n": int(y_true.shape[0]),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        result[f"precision_{average}"] = float(precision)
        result[f"recall_{average}"] = float(recall)
        result[f"f1_{average}"] = float(f1)
    result["mcc"] = float(matthews_corrcoef(y_true, y_pred))
    result["roc_auc"] = (
        float(roc_auc_score(y_true, probs[:, 1]))
        if k == 2 and np.unique(y_true).size == 2
        else None
    )
    result["ece"] = expected_calibration_error(y_true, probs)
    # Per class from precision_recall_fscore_support rather than classification_report: the same
    # numbers, but a class named "accuracy" or "macro avg" cannot collide with the report's keys.
    result["per_class"] = _per_class(y_true, y_pred, labels, list(range(k)))
    # labels=range(k): a class absent from both y_true and y_pred still gets its row and column.
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    result["confusion_matrix"] = [[int(c) for c in row] for row in matrix]
    return result


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence.

    With confidence c_i = max_j probs[i, j] and correctness a_i = [argmax_j probs[i, j] == y_i],
    the examples fall into `n_bins` equal-width bins B_b = {i : (b-1)/M < c_i <= b/M} (M = n_bins;
    a confidence of 0 goes to the first bin), and

        ECE = sum_b |B_b| / n * | mean_{i in B_b} a_i - mean_{i in B_b} c_i |

    i.e. the support-weighted gap between accuracy and mean confidence per bin. 0 is perfectly
    calibrated; the maximum is 1.

    Args:
        y_true: (n,) integer class ids.
        probs: (n, k) class probabilities.
        n_bins: the number of equal-width bins on [0, 1].

    Returns:
        The ECE as a float in [0, 1].
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)  # (n,)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)  # (n,)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" against the inner edges puts a confidence equal to an edge in the bin below:
    # right-closed bins (lo, hi], as in Guo et al.
    bin_ids = np.searchsorted(edges[1:-1], confidence, side="left")  # (n,) in [0, n_bins)
    ece = 0.0
    for b in np.unique(bin_ids):
        in_bin = bin_ids == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Metrics for multi-label classification: a label is predicted when its probability >= threshold.

    Args:
        y_true: (n, k) 0/1 indicator matrix.
        probs: (n, k) independent per-label probabilities (sigmoid outputs).
        labels: the k label names, in column order.
        threshold: the probability at or above which a label counts as predicted.

    Returns:
        A dict with `n`, `f1_micro`, `f1_macro` (unweighted mean over all k labels),
        `subset_accuracy` (fraction of examples whose whole label set is exactly right),
        `hamming_loss` (fraction of wrong (example, label) cells) and `per_class`
        ({label: {precision, recall, f1, support}}, support = number of true positives in `y_true`).

    Raises:
        ValueError: the shapes disagree, `labels` has duplicates, `y_true` is not 0/1, or `probs`
            holds values outside [0, 1].
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 2 or probs.shape != y_true.shape:
        raise ValueError(f"y_true and probs must both be (n, k); got {y_true.shape} and {probs.shape}")
    _check_labels(labels, probs.shape[1])
    _check_probabilities(probs)
    if y_true.shape[0] == 0:
        raise ValueError("multilabel_metrics needs at least one example; got 0")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must be a 0/1 indicator matrix")
    y_true = y_true.astype(np.int64)
    y_pred = (probs >= threshold).astype(np.int64)  # (n, k)

    return {
        "n": int(y_true.shape[0]),
        "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),  # exact match on indicator input
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "per_class": _per_class(y_true, y_pred, labels),
    }


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, names: list[str], labels: list[int] | None = None) -> dict:
    """Precision, recall, F1 and support of each class (each column of an indicator matrix), by name."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(names)
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Metrics for a single-output regression head.

    Args:
        y_true: (n,) target values ((n, 1) is accepted and flattened).
        y_pred: (n,) predicted values ((n, 1), a one-output head's logits, is accepted too).

    Returns:
        A dict with `n`, `mse`, `mae`, `rmse`, `pearson` and `spearman`. A correlation is None when
        either side is constant or there are fewer than two examples (it is undefined there;
        scipy would warn and return NaN).

    Raises:
        ValueError: the shapes disagree, there are no examples, or a value is not finite.
    """
    y_true = _as_vector(y_true)
    y_pred = _as_vector(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must both be (n,); got {y_true.shape} and {y_pred.shape}")
    if y_true.shape[0] == 0:
        raise ValueError("regression_metrics needs at least one example; got 0")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("y_true and y_pred must be finite (found NaN or inf)")

    mse = float(mean_squared_error(y_true, y_pred))
    defined = y_true.shape[0] >= 2 and np.ptp(y_true) > 0 and np.ptp(y_pred) > 0
    return {
        "n": int(y_true.shape[0]),
        "mse": mse,
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": math.sqrt(mse),
        "pearson": _finite_or_none(stats.pearsonr(y_true, y_pred).statistic) if defined else None,
        "spearman": _finite_or_none(stats.spearmanr(y_true, y_pred).statistic) if defined else None,
    }


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str
) -> None:
    """Write a confusion matrix as a PNG: counts in the cells, rows = true, columns = predicted.

    Uses matplotlib's object API with the Agg canvas, so it sets no global backend and leaves no
    open pyplot figure behind (safe on a headless server and inside a training loop).

    Args:
        matrix: k rows of k counts, as in `classification_metrics(...)["confusion_matrix"]`.
        labels: the k class names.
        path: where to write the PNG; missing parent directories are created.
        title: the figure title (e.g. the evaluation data name).

    Raises:
        ValueError: `matrix` is not k x k for the k `labels`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be {k} x {k} for {k} labels; got shape {counts.shape}")

    size = min(4.0 + 0.5 * k, 20.0)  # inches: grows with the class count, capped for huge label sets
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    long_labels = max((len(str(name)) for name in labels), default=0) > 6 or k > 10
    ax.set_xticklabels(
        [str(name) for name in labels],
        rotation=45 if long_labels else 0,
        ha="right" if long_labels else "center",
        rotation_mode="anchor",
    )
    ax.set_yticklabels([str(name) for name in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)

    # White text on dark cells, black on light ones, so every count stays readable.
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                color="white" if counts[i, j] > threshold else "black",
                fontsize=max(6, 12 - k // 4),
            )

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    fig.clear()  # no pyplot figure manager holds it; clearing frees the artists right away


def _check_classification_inputs(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate single-label inputs; returns y_true as int64 (n,) and probs as float64 (n, k)."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 1 or probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(f"y_true must be (n,) and probs (n, k); got {y_true.shape} and {probs.shape}")
    if y_true.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one example; got 0")
    k = probs.shape[1]
    _check_labels(labels, k)
    if not np.issubdtype(y_true.dtype, np.integer):
        if not np.all(np.mod(y_true, 1) == 0):
            raise ValueError(f"y_true must hold integer class ids; got dtype {y_true.dtype}")
    y_true = y_true.astype(np.int64)
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(
            f"y_true holds class ids outside [0, {k}): min {y_true.min()}, max {y_true.max()}"
        )
    _check_probabilities(probs)
    return y_true, probs


def _check_labels(labels: Sequence[str], k: int) -> None:
    """Raise ValueError unless there are exactly k distinct label names."""
    if len(labels) != k:
        raise ValueError(f"got {len(labels)} label names for {k} classes")
    if len(set(labels)) != k:
        raise ValueError(f"label names must be distinct; got {list(labels)}")


def _check_probabilities(probs: np.ndarray) -> None:
    """Raise ValueError unless every entry is a finite number in [0, 1]."""
    if not np.isfinite(probs).all() or probs.min(initial=0.0) < 0.0 or probs.max(initial=0.0) > 1.0:
        raise ValueError(
            "probs must be probabilities in [0, 1]; apply softmax (single-label) or sigmoid "
            "(multi-label) to the logits first"
        )


def _as_vector(values: np.ndarray) -> np.ndarray:
    """float64 (n,) from (n,) or (n, 1); any other shape is left for the caller to reject."""
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array


def _finite_or_none(value: float) -> float | None:
    """A plain float, or None where scipy returned NaN/inf."""
    value = float(value)
    return value if math.isfinite(value) else None
