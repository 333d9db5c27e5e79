"""`lmtune eval`: measure a checkpoint on labelled data (classifiers) or on text (masked LMs).

Classifiers get the metrics of metrics.py (scikit-learn/scipy), `metrics.json`, `predictions.jsonl`
(text, gold, predicted, scores) and a confusion-matrix PNG; masked LMs get loss, perplexity and
masked-token accuracy. Results go to the eval output dir (default `<checkpoint>/../eval-<data>/`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune import data, devices, metrics, runs
from lmtune.config import Config
from lmtune.errors import ConfigError
from lmtune.labels import LabelSpec, encode
from lmtune.modeling import checkpoint_config, checkpoint_max_length, checkpoint_max_windows, classifier_outputs, evaluate_mlm, has_masked_lm_head, is_classifier_checkpoint

log = logging.getLogger(__name__)

_PROBLEMS = {"single_label_classification": "single_label", "multi_label_classification": "multi_label", "regression": "regression"}


@dataclass
class EvalResult:
    output_dir: Path
    kind: str  # "classifier" | "masked-lm"
    metrics: dict[str, Any]


def score_predictions(scores: np.ndarray, targets: np.ndarray, spec: LabelSpec) -> dict[str, Any]:
    """Metrics for model outputs (`classifier_outputs`) against encoded targets."""
    if spec.problem == "single_label":
        return metrics.classification_metrics(targets, scores, list(spec.names))
    if spec.problem == "multi_label":
        return metrics.multilabel_metrics(targets, scores, list(spec.names))
    return metrics.regression_metrics(targets, scores)


def spec_from_model(config: Any) -> LabelSpec:
    """The label spec a fine-tuned checkpoint was trained with (from its config)."""
    problem = _PROBLEMS.get(config.problem_type or "", "regression" if config.num_labels == 1 else "single_label")
    names = () if problem == "regression" else tuple(config.id2label[i] for i in range(config.num_labels))
    return LabelSpec(problem, names)


def resolve_checkpoint(target: Path) -> Path:
    """A run dir's best/ (else final/), or the checkpoint dir itself."""
    for candidate in (target / "best", target / "final", target):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"{target} holds no checkpoint (no config.json in it, its best/ or its final/)")


def default_output_dir(checkpoint: Path, data_files: list[str]) -> Path:
    name = Path(data_files[0]).stem if data_files else "data"
    return checkpoint.parent / f"eval-{name}"


def predict_scores(model: Any, encoded: data.Encoded, pad_id: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Model outputs for every row, in input order (batches are length-sorted internally)."""
    return data.in_input_order(encoded, pad_id, batch_size, lambda batches: classifier_outputs(model, batches, device))


def evaluate(
    checkpoint: Path,
    data_files: list[str],
    cfg: Config,
    output_dir: Path | None = None,
    max_length: int | None = None,
    max_windows: int | None = None,
) -> EvalResult:
    """Evaluate `checkpoint` on `data_files`, with columns and device from `cfg`.

    Inputs are cut at `max_length` tokens; None: the checkpoint's own length (`checkpoint_max_length`:
    for a classifier lmtune fine-tuned, the `data.max_length` it was trained at). A classifier reads a
    longer text as up to `max_windows` windows of that length and scores their mean; None: the
    checkpoint's own (`checkpoint_max_windows`: the `data.max_windows` it was fine-tuned with).
    """
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    from lmtune.tokenization import load_checkpoint_tokenizer

    if not data_files:
        raise ConfigError("nothing to evaluate on: pass --data FILE (or set data.test in the config)")
    placement = devices.resolve(cfg.device, cfg.precision)
    remote = cfg.model.trust_remote_code
    tokenizer = load_checkpoint_tokenizer(str(checkpoint), remote)
    model_config = checkpoint_config(str(checkpoint), remote)
    out = output_dir or default_output_dir(checkpoint, data_files)
    runs.check_writable_dir(out, "the eval output dir")  # created only once there are results to write
    d = cfg.data
    length = max_length or checkpoint_max_length(model_config, tokenizer)
    if is_classifier_checkpoint(model_config):
        spec = spec_from_model(model_config)
        cols = [d.text_column, *([d.text_pair_column] if d.text_pair_column else []), d.label_column]
        rows, _ = data.load_table(data_files, "--data", cols, d.cache_dir)
        targets = encode(rows[d.label_column], spec, "--data", d.label_column)
        pairs = rows[d.text_pair_column] if d.text_pair_column else None
        windows = 1 if pairs is not None else max_windows or checkpoint_max_windows(model_config)
        encoded = data.encode_rows(tokenizer, rows[d.text_column], pairs, length, targets, windows)
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint, trust_remote_code=remote).to(placement.device).eval()
        with torch.inference_mode(), placement.autocast():
            scores = predict_scores(model, encoded, tokenizer.pad_token_id, cfg.train.batch_size * 2, placement.device)
        results = score_predictions(scores, targets, spec)
        runs.ensure_writable_dir(out, "the eval output dir")
        _write_predictions(out / "predictions.jsonl", rows, d, scores, targets, spec)
        if spec.problem == "single_label":
            metrics.plot_confusion_matrix(results["confusion_matrix"], list(spec.names), out / "confusion_matrix.png", f"{checkpoint}")
        kind = "classifier"
    else:
        if not has_masked_lm_head(model_config):
            names = ", ".join(getattr(model_config, "architectures", None) or [])
            raise ConfigError(
                f"{checkpoint} is a {names} with no masked-LM head, so it has no perplexity to measure (an ELECTRA-"
                "pretrained encoder's training metrics are in its run's metrics.jsonl): fine-tune it with "
                "`lmtune finetune` and evaluate the classifier"
            )
        texts, _ = data.load_texts(data_files, "--data", d.text_column, d.txt_unit, d.cache_dir)
        model = AutoModelForMaskedLM.from_pretrained(checkpoint, trust_remote_code=remote).to(placement.device).eval()
        block = min(length, tokenizer.model_max_length)  # never past the tokenizer's own limit
        blocks = data.pack_blocks(texts, tokenizer, block, d.num_proc, "evaluation")
        if len(blocks) == 0:
            raise ConfigError(f"--data: the text is shorter than one block of {block} tokens: give more text, or a lower data.max_length")
        masker = data.build_masker(tokenizer, model.config.vocab_size, cfg.mlm)
        stream = data.block_batches(blocks, cfg.train.batch_size, cfg.seed, -1, masker, shuffle=False)
        with torch.inference_mode(), placement.autocast():
            results = evaluate_mlm(model, stream, placement.device)
        results["blocks"] = len(blocks)
        runs.ensure_writable_dir(out, "the eval output dir")
        kind = "masked-lm"
    if kind == "classifier":
        results = {"max_length": length, "max_windows": windows, **results}
    results = {"checkpoint": str(checkpoint), "data": data_files, "kind": kind, "precision": placement.precision, **results}
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return EvalResult(out, kind, results)


def _write_predictions(path: Path, rows: Any, d: Any, scores: np.ndarray, targets: np.ndarray, spec: LabelSpec) -> None:
    names = list(spec.names)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(len(rows)):
            record: dict[str, Any] = {"text": rows[i][d.text_column]}
            if d.text_pair_column:
                record["text_pair"] = rows[i][d.text_pair_column]
            if spec.problem == "single_label":
                record.update(
                    gold=names[int(targets[i])],
                    predicted=names[int(scores[i].argmax())],
                    scores={n: round(float(s), 6) for n, s in zip(names, scores[i])},
                )
            elif spec.problem == "multi_label":
                record.update(
                    gold=[n for n, t in zip(names, targets[i]) if t > 0.5],
                    predicted=[n for n, s in zip(names, scores[i]) if s >= 0.5],
                    scores={n: round(float(s), 6) for n, s in zip(names, scores[i])},
                )
            else:
                record.update(gold=float(targets[i]), predicted=float(scores[i]))
            handle.write(json.dumps(record) + "\n")
