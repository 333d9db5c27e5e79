"""`lmtune finetune`: turn a BERT-family checkpoint into a text classifier (or regressor).

Reads top to bottom: resolve the device, load the checkpoint's tokenizer, read the labelled rows
(validation from files or a seeded, stratified split of train), infer the problem and label map,
load the model with a classification head, tokenize (no padding: batches are grouped by length and
padded per batch), create the run dir, train with the shared engine keeping best/ by the selection
metric, save final/. Everything the user can get wrong fails before the run dir is touched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune import distributed, data, engine, runs
from lmtune.config import Config
from lmtune.errors import ConfigError, DataError
from lmtune.labels import LabelSpec, class_weights, encode, infer_spec
from lmtune.metrics import SELECTION_DEFAULTS, greater_is_better
from lmtune.modeling import MAX_WINDOWS_KEY, use_attention, check_compatible, classification_loss, load_for_finetuning
from lmtune.stages.evaluate import predict_scores, score_predictions
from lmtune.tokenization import load_checkpoint_tokenizer
from lmtune.stages.common import open_run, place_run, run_training
from lmtune.ui import TrainingDisplay

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    run_dir: Path
    steps: int
    seconds: float
    metrics: dict[str, float]
    best: dict[str, Any] | None
    spec: LabelSpec


def columns(cfg: Config) -> list[str]:
    d = cfg.data
    return [d.text_column, *([d.text_pair_column] if d.text_pair_column else []), d.label_column]


def load_splits(cfg: Config) -> tuple[Any, Any, LabelSpec, list[Path]]:
    """Training and validation rows and the label spec (inferred from all training labels, checked
    before any split); without validation files, a seeded split of train, stratified when it can be."""
    d, f = cfg.data, cfg.finetune
    train, files = data.load_table(d.train, "data.train", columns(cfg), d.cache_dir)
    spec = infer_spec(train[d.label_column], f.problem, "data.train", d.label_column)
    if d.validation:
        val, val_files = data.load_table(d.validation, "data.validation", columns(cfg), d.cache_dir)
        return train, val, spec, files + val_files
    from sklearn.model_selection import train_test_split

    n_val = max(1, round(len(train) * d.validation_fraction))
    if len(train) - n_val < 2:
        raise DataError(f"data.train has {len(train)} rows: too few to hold out validation; give data.validation files")
    stratify = None
    if spec.problem == "single_label":
        labels = [str(v) for v in train[d.label_column]]
        counts = [labels.count(n) for n in spec.names]
        if min(counts) >= 2 and n_val >= len(spec.names):
            stratify = labels
    idx_train, idx_val = train_test_split(np.arange(len(train)), test_size=n_val, random_state=cfg.seed, stratify=stratify)
    return train.select(np.sort(idx_train)), train.select(np.sort(idx_val)), spec, files


def layerwise_groups(model: torch.nn.Module, weight_decay: float, decay: float | None) -> list[dict[str, Any]] | None:
    """Parameter groups whose LR shrinks by `decay` per layer going down (embeddings lowest)."""
    if decay is None:
        return None
    n_layers = model.config.num_hidden_layers
    by_scale: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        match = re.search(r"\.layers?\.(\d+)\.", name)
        if match:
            depth = n_layers - int(match.group(1))
        elif ".embeddings." in name or name.startswith("embeddings."):
            depth = n_layers + 1
        else:
            depth = 0  # pooler and classifier head
        by_scale.setdefault(decay**depth, []).append(param)
    return [g for scale, params in sorted(by_scale.items()) for g in engine.default_param_groups(params, weight_decay, scale)]


def evaluation_metrics(scores: np.ndarray, targets: np.ndarray, spec: LabelSpec) -> dict[str, float]:
    """The scalar metrics of one validation pass; undefined ones (None, e.g. pearson of constant
    predictions) become nan, which never counts as better."""
    results = score_predictions(scores, targets, spec)
    return {k: float("nan") if v is None else v for k, v in results.items() if v is None or isinstance(v, (int, float))}


def uninformed_scores(targets: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """Outputs of the right shape that know nothing (uniform probabilities, zeros): scoring them shows
    which metrics an evaluation reports without running a model."""
    if spec.problem == "single_label":
        return np.full((len(targets), spec.num_labels), 1.0 / spec.num_labels)
    if spec.problem == "multi_label":
        return np.full(np.shape(targets), 0.5)
    return np.zeros(np.shape(targets), dtype=float)


def finetune(
    cfg: Config, overwrite: bool = False, resume: bool = False, display: TrainingDisplay | None = None, force: bool = False
) -> FinetuneResult:
    """Run a whole fine-tuning job described by `cfg` (validated for the finetune stage)."""
    placement, out, resume_from = place_run(cfg, resume, overwrite, force)
    d, f = cfg.data, cfg.finetune
    checkpoint = cfg.model.checkpoint or ""
    remote = cfg.model.trust_remote_code
    tokenizer = load_checkpoint_tokenizer(checkpoint, remote)
    with distributed.main_first():  # the other processes reuse rank 0's data caches
        train_rows, val_rows, spec, files = load_splits(cfg)
    how = "inferred from the label column" if f.problem == "auto" else "as configured"
    log.info("problem: %s (%s)%s", spec.problem, how, f", {len(spec.names)} labels: {', '.join(spec.names[:10])}" if spec.names else "")
    y_train = encode(train_rows[d.label_column], spec, "data.train", d.label_column)
    y_val = encode(val_rows[d.label_column], spec, "data.validation", d.label_column)
    log.info("data: %d training and %d validation rows from %d file(s)", len(train_rows), len(val_rows), len(files))

    torch.manual_seed(cfg.seed)  # the new head's initialisation (and dropout) follow the seed
    model, note = load_for_finetuning(checkpoint, spec, cfg.model.dropout, remote)
    log.info("model: %s", note)
    check_compatible(model, tokenizer, d.max_length)
    # the checkpoints carry the input length trained on: predict, eval and transformers' pipeline cut there too
    tokenizer.model_max_length = d.max_length
    if d.max_windows > 1:  # and the windows of a long text it reads, which lmtune's eval and predict follow
        setattr(model.config, MAX_WINDOWS_KEY, d.max_windows)
    log.info("attention: %s", use_attention(model, cfg.model.attention, placement.device, placement.precision))
    if f.freeze_embeddings:
        for param in model.base_model.embeddings.parameters():
            param.requires_grad_(False)

    def encoded(rows: Any, targets: np.ndarray) -> data.Encoded:
        pairs = rows[d.text_pair_column] if d.text_pair_column else None
        return data.encode_rows(tokenizer, rows[d.text_column], pairs, d.max_length, targets, d.max_windows)

    train_enc, val_enc = encoded(train_rows, y_train), encoded(val_rows, y_val)
    if d.max_windows > 1:
        log.info(
            "windows: %d training and %d validation windows of up to %d tokens (at most %d a text)",
            len(train_enc.input_ids), len(val_enc.input_ids), d.max_length, d.max_windows,
        )
    weights = None
    if spec.problem == "single_label" and f.class_weights is not None:
        if f.class_weights == "auto":
            weights = torch.from_numpy(class_weights(train_enc.targets, spec.num_labels))  # per window
        elif len(f.class_weights) != spec.num_labels:
            raise ConfigError(
                f"finetune.class_weights has {len(f.class_weights)} values for {spec.num_labels} labels ({', '.join(spec.names)})"
            )
        else:
            weights = torch.tensor(f.class_weights, dtype=torch.float32)
        log.info("class weights: %s", ", ".join(f"{n}={w:.3g}" for n, w in zip(spec.names, weights.tolist())))
    metric = f.select_metric or SELECTION_DEFAULTS[spec.problem]
    n_batches = -(-len(train_enc.input_ids) // cfg.train.batch_size)
    engine.ensure_training_possible(n_batches, cfg.train, f"data.train ({len(train_enc.input_ids)} rows)")
    reported = evaluation_metrics(uninformed_scores(y_val, spec), y_val, spec)
    if metric not in reported:  # checked here, before the run dir: the engine would only see it at the first evaluation
        raise ConfigError(f"finetune.select_metric {metric!r} is not an evaluation metric of a {spec.problem} task: use one of {', '.join(reported)}")

    run_dir = open_run(
        cfg,
        out,
        overwrite,
        resume_from,
        command="finetune",
        placement=placement.as_dict(),
        checkpoint=checkpoint,
        problem=spec.problem,
        labels=list(spec.names),
        data={"fingerprint": data.fingerprint(files), "files": len(files), "train_rows": len(train_rows), "validation_rows": len(val_rows)},
    )

    t = cfg.train
    pad_id = tokenizer.pad_token_id
    train_lengths = train_enc.lengths

    def batches(epoch: int, first: int):
        order = data.length_grouped_batches(train_lengths, t.batch_size, cfg.seed, epoch)
        for rows in order[first:]:
            yield data.pad_batch(train_enc, rows, pad_id)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return evaluation_metrics(predict_scores(model, val_enc, pad_id, t.batch_size * 2, placement.device), y_val, spec)

    def save(model: torch.nn.Module, path: Path) -> None:
        runs.save_hf_checkpoint(model, tokenizer, path)

    task = engine.Task(
        model=model,
        batches=batches,
        batches_per_epoch=n_batches,
        loss=lambda m, b: classification_loss(m, b, spec.problem, weights),
        save=save,
        count=lambda b: int(b["input_ids"].shape[0]),
        unit="samples",
        evaluate=evaluate,
        select_metric=metric,
        greater_is_better=greater_is_better(metric),
        patience=f.patience,
        param_groups=layerwise_groups(model, t.weight_decay, f.layerwise_lr_decay),
    )
    result = run_training(task, cfg, placement, run_dir, display, resume_from)
    if result.best:
        log.info("best %s = %.4f at step %d, saved to %s", metric, result.best["value"], result.best["step"], run_dir / "best")
    return FinetuneResult(run_dir, result.steps, result.seconds, result.last_eval, result.best, spec)
