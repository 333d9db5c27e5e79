"""Labels for fine-tuning: infer the problem from the label column, build the label map, encode.

- single_label: one string, integer or boolean per row; the label map is sorted (numbers
  numerically, strings alphabetically) so the same data always gives the same ids.
- multi_label: a list of labels per row (multi-hot targets).
- regression: a number per row; `auto` picks it when any label has a fractional part.

Does not read files (data.py does) and knows nothing about models.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmtune.errors import DataError

HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


@dataclass(frozen=True)
class LabelSpec:
    """The problem and the label names in id order (empty for regression)."""

    problem: str
    names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return 1 if self.problem == "regression" else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names)) if self.names else {0: "score"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_present(values: list[Any], key: str, column: str) -> None:
    for row, value in enumerate(values, start=1):
        if _missing(value):
            raise DataError(f"{key}: row {row} has no label in column {column!r} (got {value!r}): fill it in or drop the row")


def _name(value: Any) -> str:
    return str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if _is_number(value) or isinstance(value, bool) else (1, str(value))


def infer_spec(values: list[Any], problem: str, key: str = "data.train", column: str = "label") -> LabelSpec:
    """Decide the problem (when `auto`) and build the label map from the training labels.

    Raises:
        DataError: for missing labels, mixed types, non-numeric regression labels, or one class only.
    """
    _check_present(values, key, column)
    lists = [isinstance(v, (list, tuple)) for v in values]
    if problem == "auto":
        if any(lists):
            problem = "multi_label"
        elif all(_is_number(v) for v in values) and any(float(v) != int(v) for v in values):
            problem = "regression"
        else:
            problem = "single_label"
    if problem == "regression":
        bad = next(((i, v) for i, v in enumerate(values, 1) if not _is_number(v)), None)
        if bad:
            raise DataError(f"{key}: row {bad[0]} has the label {bad[1]!r}, which is not a number (problem: regression)")
        return LabelSpec("regression", ())
    if problem == "multi_label":
        if not all(lists):
            row = lists.index(False) + 1
            raise DataError(f"{key}: row {row} has the label {values[row - 1]!r}; multi-label rows need a list of labels")
        flat = [item for v in values for item in v]
    else:
        if any(lists):
            row = lists.index(True) + 1
            raise DataError(f"{key}: row {row} has a list label {values[row - 1]!r}; set finetune.problem: multi_label")
        flat = list(values)
    kinds = {"number" if _is_number(v) else type(v).__name__ for v in flat}
    if len(kinds) > 1:
        raise DataError(f"{key}: column {column!r} mixes label types ({', '.join(sorted(kinds))}): make every label the same type")
    names = tuple(_name(v) for v in sorted(set(flat), key=_sort_key))
    if len(names) < 2:
        raise DataError(f"{key}: every training row has the label {names[0] if names else None!r}: a classifier needs at least two classes")
    return LabelSpec(problem, names)


def encode(values: list[Any], spec: LabelSpec, key: str, column: str = "label") -> np.ndarray:
    """Targets for `values`: class ids (single), multi-hot rows (multi) or floats (regression).

    Raises:
        DataError: for missing labels or labels the training data never had.
    """
    _check_present(values, key, column)
    if spec.problem == "regression":
        bad = next(((i, v) for i, v in enumerate(values, 1) if not _is_number(v)), None)
        if bad:
            raise DataError(f"{key}: row {bad[0]} has the label {bad[1]!r}, which is not a number (problem: regression)")
        return np.asarray(values, dtype=np.float32)
    index = spec.label2id
    flat = [item for v in values for item in v] if spec.problem == "multi_label" else values
    unseen = sorted({_name(v) for v in flat} - set(index))
    if unseen:
        shown = ", ".join(map(repr, unseen[:5])) + (" ..." if len(unseen) > 5 else "")
        raise DataError(f"{key}: labels the training data never had: {shown} (known: {', '.join(spec.names)})")
    if spec.problem == "single_label":
        return np.asarray([index[_name(v)] for v in values], dtype=np.int64)
    targets = np.zeros((len(values), len(spec.names)), dtype=np.float32)
    for row, labels in enumerate(values):
        for label in labels:
            targets[row, index[_name(label)]] = 1.0
    return targets


def class_weights(targets: np.ndarray, num_labels: int) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 (`finetune.class_weights: auto`)."""
    counts = Counter(targets.tolist())
    freq = np.asarray([counts.get(i, 0) for i in range(num_labels)], dtype=np.float64)
    weights = np.where(freq > 0, freq.sum() / (num_labels * np.maximum(freq, 1)), 0.0)
    return (weights / weights[weights > 0].mean()).astype(np.float32)
