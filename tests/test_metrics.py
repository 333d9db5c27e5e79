"""Tests for lmtune.metrics: every expected value is computed by hand in the test, not by sklearn."""

from __future__ import annotations

import json
import math
import struct
import warnings
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest

from lmtune.metrics import (
    SELECTION_DEFAULTS,
    classification_metrics,
    greater_is_better,
    multilabel_metrics,
    plot_confusion_matrix,
    regression_metrics,
)

# Any warning (sklearn's UndefinedMetricWarning, scipy's ConstantInputWarning) fails the test: the
# metrics must handle the degenerate cases themselves instead of warning on the user's console.
pytestmark = pytest.mark.filterwarnings("error")

LABELS3 = ["neg", "neu", "pos"]


def one_hot_probs(y_pred: list[int], k: int, confidence: float = 0.8) -> np.ndarray:
    """(n, k) probabilities whose argmax is y_pred: `confidence` on it, the rest spread evenly."""
    probs = np.full((len(y_pred), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(y_pred)), y_pred] = confidence
    return probs


def assert_plain_json(value: object) -> None:
    """Only JSON-native Python types all the way down (no numpy scalars, no NaN)."""
    json.dumps(value, allow_nan=False)
    if isinstance(value, dict):
        assert all(isinstance(key, str) for key in value)
        for item in value.values():
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)


# --- single-label ------------------------------------------------------------------------------

# 3 classes, 8 examples.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 0, 2, 2, 1]
# Counted by hand:
#   class 0 (neg): predicted at 0,1,2,4; true at 0,1,2   -> TP 3, FP 1 (idx 4), FN 0
#   class 1 (neu): predicted at 3,7;     true at 3,4     -> TP 1, FP 1 (idx 7), FN 1 (idx 4)
#   class 2 (pos): predicted at 5,6;     true at 5,6,7   -> TP 2, FP 0,         FN 1 (idx 7)
PRECISION = [F(3, 4), F(1, 2), F(1, 1)]
RECALL = [F(3, 3), F(1, 2), F(2, 3)]
F1 = [F(2 * 3, 2 * 3 + 1 + 0), F(2 * 1, 2 * 1 + 1 + 1), F(2 * 2, 2 * 2 + 0 + 1)]  # 2TP/(2TP+FP+FN)
SUPPORT = [3, 2, 3]


def test_single_label_metrics_match_hand_counts() -> None:
    result = classification_metrics(np.array(Y_TRUE), one_hot_probs(Y_PRED, 3), LABELS3)

    assert F1 == [F(6, 7), F(1, 2), F(4, 5)]  # the hand arithmetic itself
    assert result["n"] == 8
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["precision_macro"] == pytest.approx(float(sum(PRECISION) / 3))  # 3/4
    assert result["recall_macro"] == pytest.approx(float(sum(RECALL) / 3))  # 13/18
    assert result["f1_macro"] == pytest.approx(float(F(151, 210)))  # (6/7 + 1/2 + 4/5) / 3
    weighted = lambda values: float(sum(s * v for s, v in zip(SUPPORT, values)) / 8)  # noqa: E731
    assert result["precision_weighted"] == pytest.approx(weighted(PRECISION))  # 25/32
    assert result["recall_weighted"] == pytest.approx(6 / 8)  # weighted recall is accuracy
    assert result["f1_weighted"] == pytest.approx(float(F(209, 280)))
    for name, p, r, f, s in zip(LABELS3, PRECISION, RECALL, F1, SUPPORT):
        assert result["per_class"][name] == pytest.approx(
            {"precision": float(p), "recall": float(r), "f1": float(f), "support": s}
        )
    # Multi-class MCC (Gorodkin): (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2) (s^2 - sum t_k^2))
    # c = 6 correct, s = 8, predicted counts p = (4, 2, 2), true counts t = (3, 2, 3).
    numerator = 6 * 8 - (4 * 3 + 2 * 2 + 2 * 3)  # 26
    denominator = math.sqrt((64 - (16 + 4 + 4)) * (64 - (9 + 4 + 9)))  # sqrt(40 * 42)
    assert result["mcc"] == pytest.approx(numerator / denominator)
    assert result["roc_auc"] is None  # 3 classes: binary only
    assert_plain_json(result)


def test_confusion_matrix_rows_are_true_columns_are_predicted() -> None:
    result = classification_metrics(np.array(Y_TRUE), one_hot_probs(Y_PRED, 3), LABELS3)
    assert result["confusion_matrix"] == [
        [3, 0, 0],  # true neg: all predicted neg
        [1, 1, 0],  # true neu: idx 4 predicted neg, idx 3 neu
        [0, 1, 2],  # true pos: idx 7 predicted neu
    ]
    # a single unambiguous case: one example, true class 2, predicted class 0 -> row 2, column 0
    single = classification_metrics(np.array([2]), one_hot_probs([0], 3), LABELS3)
    assert single["confusion_matrix"] == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_prediction_is_argmax_of_probs() -> None:
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    result = classification_metrics(np.array([1, 2]), probs, LABELS3)
    assert result["confusion_matrix"] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert result["accuracy"] == 0.5


def test_binary_roc_auc_by_ranking() -> None:
    y_true = np.array([0, 0, 1, 1, 0, 1])
    p_pos = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.9])
    # positives score 0.35, 0.8, 0.9; negatives 0.1, 0.4, 0.5. Pairs where the positive ranks higher:
    # 0.35 beats 0.1 only (1), 0.8 beats all three (3), 0.9 beats all three (3) -> 7 of 9 pairs.
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    result = classification_metrics(y_true, probs, ["no", "yes"])
    assert result["roc_auc"] == pytest.approx(7 / 9)
    assert_plain_json(result)


def test_roc_auc_is_none_with_one_class_in_y_true() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    result = classification_metrics(np.array([0, 0, 0]), probs, ["no", "yes"])
    assert result["roc_auc"] is None
    assert "roc_auc" in result
    assert_plain_json(result)


def test_ece_by_hand_on_four_examples() -> None:
    probs = np.array(
        [
            [0.90, 0.10],  # conf 0.90, predicts 0, true 0: right  -> bin (13/15, 14/15]
            [0.12, 0.88],  # conf 0.88, predicts 1, true 0: wrong  -> bin (13/15, 14/15]
            [0.30, 0.70],  # conf 0.70, predicts 1, true 1: right  -> bin (10/15, 11/15]
            [0.65, 0.35],  # conf 0.65, predicts 0, true 1: wrong  -> bin ( 9/15, 10/15]
        ]
    )
    y_true = np.array([0, 0, 1, 1])
    # ECE = sum over bins |B|/n * |accuracy(B) - mean confidence(B)|
    bin_13 = 2 / 4 * abs(1 / 2 - (0.90 + 0.88) / 2)  # 0.5 * 0.39
    bin_10 = 1 / 4 * abs(1 - 0.70)
    bin_9 = 1 / 4 * abs(0 - 0.65)
    expected = bin_13 + bin_10 + bin_9
    assert expected == pytest.approx(0.4325)
    assert classification_metrics(y_true, probs, ["a", "b"])["ece"] == pytest.approx(expected)


def test_ece_is_zero_for_confident_correct_predictions() -> None:
    # confidence exactly 1.0 lands in the last bin, whose accuracy is 1
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert classification_metrics(np.array([0, 1, 2, 1]), probs, LABELS3)["ece"] == 0.0


def test_class_never_predicted_gives_zero_precision_without_warning() -> None:
    y_true = np.array([0, 1, 2, 2])
    y_pred = [0, 1, 1, 1]  # class 2 is in y_true but never predicted: its precision is 0/0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = classification_metrics(y_true, one_hot_probs(y_pred, 3), LABELS3)
    assert result["per_class"]["pos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    # neu: TP 1, FP 2 -> precision 1/3, recall 1, F1 2/(2+2) = 1/2
    assert result["per_class"]["neu"]["precision"] == pytest.approx(1 / 3)
    assert result["per_class"]["neu"]["f1"] == pytest.approx(1 / 2)
    assert result["f1_macro"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 2, 0]]


def test_class_absent_everywhere_keeps_its_row_but_not_its_macro_vote() -> None:
    # only classes 0 and 1 occur; class 2 ("pos") appears in neither y_true nor predictions
    y_true = np.array([0, 0, 1, 1])
    y_pred = [0, 1, 1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = classification_metrics(y_true, one_hot_probs(y_pred, 3), LABELS3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert result["per_class"]["pos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # neg: TP 1, FN 1 -> F1 2/3; neu: TP 2, FP 1 -> F1 4/5; the macro mean is over these two only
    assert result["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_label_names_that_look_like_report_keys_do_not_collide() -> None:
    labels = ["accuracy", "macro avg", "weighted avg"]
    result = classification_metrics(np.array(Y_TRUE), one_hot_probs(Y_PRED, 3), labels)
    assert list(result["per_class"]) == labels
    assert result["per_class"]["accuracy"]["support"] == 3


@pytest.mark.parametrize(
    ("y_true", "probs", "labels", "match"),
    [
        ([0, 1], [[0.5, 0.5]], ["a", "b"], "y_true must be"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "outside"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a"], "label names"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "a"], "distinct"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], ["a", "b"], "softmax"),
    ],
)
def test_classification_rejects_malformed_inputs(y_true, probs, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.array(y_true), np.array(probs), labels)


# --- multi-label -------------------------------------------------------------------------------


def test_multilabel_metrics_by_hand() -> None:
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    probs = np.array(
        [
            [0.9, 0.2, 0.6],  # -> 1 0 1  exact
            [0.1, 0.7, 0.55],  # -> 0 1 1  a false positive in column 2
            [0.8, 0.3, 0.1],  # -> 1 0 0  a false negative in column 1
            [0.2, 0.1, 0.5],  # -> 0 0 1  exact (0.5 >= threshold counts as predicted)
        ]
    )
    result = multilabel_metrics(y_true, probs, ["a", "b", "c"], threshold=0.5)
    # TP = 2 + 1 + 1 + 1 = 5, FP = 1, FN = 1 over all cells -> micro F1 = 2*5 / (2*5 + 1 + 1)
    assert result["f1_micro"] == pytest.approx(10 / 12)
    assert result["subset_accuracy"] == pytest.approx(2 / 4)  # rows 1 and 4 exactly right
    assert result["hamming_loss"] == pytest.approx(2 / 12)  # 2 wrong cells of 12
    # per column: a TP2 -> 1; b TP1 FN1 -> 2/3; c TP2 FP1 -> 4/5
    assert result["per_class"]["a"]["f1"] == pytest.approx(1.0)
    assert result["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert result["per_class"]["c"]["f1"] == pytest.approx(4 / 5)
    assert [result["per_class"][name]["support"] for name in "abc"] == [2, 2, 2]
    assert result["f1_macro"] == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    assert result["n"] == 4
    assert_plain_json(result)


def test_multilabel_threshold_and_empty_columns() -> None:
    y_true = np.array([[1, 0], [1, 0]])  # label "y" never occurs and is never predicted at 0.9
    probs = np.array([[0.8, 0.6], [0.7, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = multilabel_metrics(y_true, probs, ["x", "y"], threshold=0.9)
    # nothing reaches 0.9: no predictions at all -> every F1 is 0, no example is exactly right
    assert result["f1_micro"] == 0.0
    assert result["subset_accuracy"] == 0.0
    assert result["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # at 0.75 row 1 -> [1, 0] (right), row 2 -> [0, 0] (misses x); at 0.5 row 1 -> [1, 1] (extra y)
    assert multilabel_metrics(y_true, probs, ["x", "y"], threshold=0.75)["subset_accuracy"] == 1 / 2
    assert multilabel_metrics(y_true, probs, ["x", "y"], threshold=0.65)["subset_accuracy"] == 1.0
    assert multilabel_metrics(y_true, probs, ["x", "y"], threshold=0.5)["subset_accuracy"] == 1 / 2


def test_multilabel_rejects_non_binary_targets() -> None:
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(np.array([[2, 0]]), np.array([[0.5, 0.5]]), ["x", "y"])


# --- regression --------------------------------------------------------------------------------


def test_regression_errors_by_hand() -> None:
    y_true = np.array([1.0, 2.0, 3.0, 4.0])
    y_pred = np.array([1.5, 2.0, 2.0, 5.0])
    # errors: 0.5, 0, -1, 1 -> squared 0.25, 0, 1, 1; absolute 0.5, 0, 1, 1
    result = regression_metrics(y_true, y_pred)
    assert result["mse"] == pytest.approx(2.25 / 4)
    assert result["mae"] == pytest.approx(2.5 / 4)
    assert result["rmse"] == pytest.approx(0.75)
    assert result["n"] == 4
    assert_plain_json(result)


def test_pearson_is_one_for_a_linear_relation() -> None:
    y_true = np.array([-1.0, 0.0, 2.0, 3.5, 7.0])
    result = regression_metrics(y_true, 2 * y_true + 3)
    assert result["pearson"] == pytest.approx(1.0)
    assert result["spearman"] == pytest.approx(1.0)
    assert regression_metrics(y_true, -y_true)["pearson"] == pytest.approx(-1.0)


def test_spearman_is_one_for_a_monotone_nonlinear_relation() -> None:
    y_true = np.array([-2.0, -1.0, 0.5, 3.0, 4.0])
    result = regression_metrics(y_true, y_true**3)
    assert result["spearman"] == pytest.approx(1.0)  # same ranks
    assert result["pearson"] < 0.99  # but not a straight line


def test_constant_predictions_give_none_correlations_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
        single = regression_metrics(np.array([1.0]), np.array([3.0]))
    assert result["pearson"] is None
    assert result["spearman"] is None
    assert result["mse"] == pytest.approx((1 + 0 + 1) / 3)  # the errors are still defined
    assert single["pearson"] is None and single["mse"] == 4.0
    assert_plain_json(result)
    assert_plain_json(single)


def test_regression_accepts_a_one_output_column_and_rejects_nan() -> None:
    result = regression_metrics(np.array([1.0, 2.0]), np.array([[1.0], [3.0]]))
    assert result["mae"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="finite"):
        regression_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="must both be"):
        regression_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]))


# --- plot, selection ---------------------------------------------------------------------------


def test_confusion_matrix_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "confusion_matrix.png"
    labels = ["negative", "neutral", "positive"]  # long enough to be rotated
    plot_confusion_matrix([[3, 0, 0], [1, 1, 0], [0, 1, 2]], labels, path, "validation")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 2_000 < len(data) < 1_000_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR: the first chunk after the signature
    assert 200 <= width <= 2_000 and 200 <= height <= 2_000


def test_confusion_matrix_png_leaves_no_pyplot_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "cm.png", "t")
    assert plt.get_fignums() == before


def test_confusion_matrix_png_rejects_a_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 x 2"):
        plot_confusion_matrix([[1, 0, 0]], ["a", "b"], tmp_path / "cm.png", "t")
    assert not (tmp_path / "cm.png").exists()


def test_selection_defaults_and_direction() -> None:
    assert SELECTION_DEFAULTS == {
        "single_label": "f1_macro",
        "multi_label": "f1_micro",
        "regression": "pearson",
    }
    for metric in ("mse", "mae", "rmse", "loss", "ece", "hamming_loss", "eval_loss"):
        assert greater_is_better(metric) is False, metric
    higher = ("accuracy", "f1_macro", "f1_micro", "mcc", "roc_auc", "pearson", "spearman", "subset_accuracy")
    for metric in higher:
        assert greater_is_better(metric) is True, metric
    # every default selection metric is a key the corresponding function returns
    single = classification_metrics(np.array([0, 1]), np.eye(2), ["a", "b"])
    multi = multilabel_metrics(np.eye(2), np.eye(2), ["a", "b"])
    regression = regression_metrics(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    assert SELECTION_DEFAULTS["single_label"] in single
    assert SELECTION_DEFAULTS["multi_label"] in multi
    assert SELECTION_DEFAULTS["regression"] in regression
