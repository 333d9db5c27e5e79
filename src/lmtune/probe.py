"""A linear probe of pretraining quality.

At each evaluation of a pretraining run, the frozen encoder embeds a labelled set (the mean of its
last hidden states over the real tokens), a logistic regression is fitted on the training rows and
scored on the held-out rows. Its accuracy tells, while the run goes on, how useful the encoder
already is for classification and when more pretraining stops paying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmtune import data
from lmtune.config import ProbeSection
from lmtune.errors import DataError
from lmtune.labels import encode, infer_spec


@dataclass
class Probe:
    train: data.Encoded
    validation: data.Encoded
    y_train: np.ndarray
    y_validation: np.ndarray
    pad_id: int


def build_probe(p: ProbeSection, tokenizer: Any, max_length: int, seed: int, cache_dir: str | None) -> Probe:
    """Read and tokenize the probe's labelled rows (once, before training)."""
    columns = [p.text_column, p.label_column]
    train, _ = data.load_table(p.train, "probe.train", columns, cache_dir)
    spec = infer_spec(train[p.label_column], "auto", "probe.train", p.label_column)
    if spec.problem != "single_label":
        raise DataError(f"probe.train: the probe needs one class label per row, but {p.label_column!r} looks {spec.problem.replace('_', '-')}")
    if len(spec.names) < 2:
        raise DataError(f"probe.train: {p.label_column!r} has a single class; the probe needs at least two")
    y = encode(train[p.label_column], spec, "probe.train", p.label_column)
    texts = list(train[p.text_column])
    rng = np.random.default_rng(seed)
    if p.validation:
        val, _ = data.load_table(p.validation, "probe.validation", columns, cache_dir)
        val_texts, y_val = list(val[p.text_column]), encode(val[p.label_column], spec, "probe.validation", p.label_column)
        train_idx = rng.permutation(len(texts))
    else:
        order = rng.permutation(len(texts))
        n_val = max(1, len(texts) // 5)
        val_idx, train_idx = order[:n_val], order[n_val:]
        val_texts, y_val = [texts[i] for i in val_idx], y[val_idx]
    train_idx = np.sort(train_idx[: p.max_rows])
    val_keep = np.sort(rng.permutation(len(val_texts))[: p.max_rows])
    if len(np.unique(y[train_idx])) < 2:
        raise DataError("probe.train: the probe's training rows hold a single class; give more labelled rows")
    return Probe(
        train=data.encode_rows(tokenizer, [texts[i] for i in train_idx], None, max_length),
        validation=data.encode_rows(tokenizer, [val_texts[i] for i in val_keep], None, max_length),
        y_train=y[train_idx],
        y_validation=np.asarray(y_val)[val_keep],
        pad_id=tokenizer.pad_token_id,
    )


def mean_pooled(model: Any, encoded: data.Encoded, pad_id: int, batch_size: int, device: torch.device) -> np.ndarray:
    """(rows, hidden) features in input order: the encoder's last hidden states averaged over real tokens."""

    def pool(batch: dict[str, torch.Tensor]) -> np.ndarray:
        mask = batch["attention_mask"].to(device)
        hidden = model.base_model(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).float().cpu().numpy()

    return data.in_input_order(encoded, pad_id, batch_size, lambda batches: np.concatenate([pool(b) for b in batches]))


def probe_scores(model: Any, probe: Probe, batch_size: int, device: torch.device) -> dict[str, float]:
    """Fit the logistic regression on the training features; accuracy and macro-F1 on the held-out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = mean_pooled(model, probe.train, probe.pad_id, batch_size, device)
    x_val = mean_pooled(model, probe.validation, probe.pad_id, batch_size, device)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(x_train, probe.y_train)
    predicted = clf.predict(x_val)
    return {
        "probe_accuracy": float(accuracy_score(probe.y_validation, predicted)),
        "probe_macro_f1": float(f1_score(probe.y_validation, predicted, average="macro")),
    }
