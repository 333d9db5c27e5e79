"""Classify texts with a fine-tuned checkpoint: load it, read the inputs, predict in length-sorted batches.

`lmtune predict` calls these three functions in turn: `load_classifier` (a local Hugging Face
sequence-classification checkpoint, checked before anything is loaded), `read_inputs` (texts from the
command line, a file or stdin) and `predict` (batched inference with dynamic padding; the results come
back in input order). Does not write anything: the CLI prints the results as JSON lines.
"""

from __future__ import annotations

import csv
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lmtune import devices
from lmtune.data import check_text_file, encode_rows
from lmtune.errors import ConfigError, DataError, DeviceError
from lmtune.modeling import checkpoint_max_length, checkpoint_max_windows, is_classifier_checkpoint
from lmtune.stages.evaluate import predict_scores

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # lmtune predict --precision

INPUT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
MULTI_LABEL_THRESHOLD = 0.5  # a label applies when its sigmoid probability reaches this
# Files that hold a tokenizer's vocabulary. transformers 5 does not fail on a dir without any of them:
# AutoTokenizer silently builds an empty 5-token tokenizer, so we look for them ourselves.
_GIVE_CHECKPOINT = "give a fine-tuned run's final/ or best/ directory"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


@dataclass(frozen=True)
class ClassifierInfo:
    """What a loaded classifier predicts and how long its inputs may be."""

    problem_type: str  # single_label_classification | multi_label_classification | regression
    id2label: dict[int, str]  # output index -> label name (from config.json)
    max_length: int  # the longest input in tokens: `modeling.checkpoint_max_length`
    max_windows: int = 1  # windows of max_length read of a longer text: `modeling.checkpoint_max_windows`

    @property
    def labels(self) -> list[str]:
        """The label names in output order."""
        return [self.id2label[i] for i in range(len(self.id2label))]


# ----------------------------------------------------------------------------------------------
# Loading


def load_classifier(checkpoint_dir: str, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ClassifierInfo]:
    """Load a local sequence-classification checkpoint and its tokenizer onto `device`, in eval mode.

    Args:
        checkpoint_dir: a Hugging Face checkpoint dir (a run's `final/` or `best/`).
        device: where the model runs.

    Returns:
        (model, tokenizer, info).

    Raises:
        DataError: the dir is missing, holds no config.json, weights or tokenizer, or cannot be loaded.
        ConfigError: the checkpoint is not a sequence classifier (e.g. a pretrained masked LM).
    """
    path = Path(checkpoint_dir)
    if not path.exists():
        raise DataError(f"checkpoint {checkpoint_dir} does not exist: {_GIVE_CHECKPOINT}")
    if not path.is_dir():
        raise DataError(f"checkpoint {checkpoint_dir} is a file, not a directory: {_GIVE_CHECKPOINT}")
    if not (path / "config.json").is_file():
        inside = [name for name in ("best", "final") if (path / name / "config.json").is_file()]
        hint = f"it looks like a run dir: use {path / inside[0]}" if inside else _GIVE_CHECKPOINT
        raise DataError(f"{checkpoint_dir} is not a model directory (it has no config.json): {hint}")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path / 'config.json'} cannot be read as a model config: {_first_line(exc)}") from None
    _check_classifier_config(config, path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise DataError(
            f"{checkpoint_dir} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}): "
            "save the tokenizer next to the model (tokenizer.save_pretrained(dir)), or copy its files there"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"the tokenizer in {checkpoint_dir} cannot be loaded: {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        raise DataError(
            f"the tokenizer in {checkpoint_dir} has no padding token, which batched prediction needs: "
            "set one (e.g. tokenizer.pad_token = tokenizer.eos_token) and save the tokenizer again"
        )
    if len(tokenizer) > config.vocab_size:
        raise DataError(
            f"the tokenizer in {checkpoint_dir} has {len(tokenizer)} tokens but the model only {config.vocab_size}: "
            "the tokenizer files belong to another model; save the one the model was trained with"
        )
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise DataError(f"the model weights in {checkpoint_dir} cannot be loaded: {_first_line(exc)}") from None
    missing = sorted(loading.get("missing_keys") or ())
    if missing:  # transformers would initialise these at random and predict noise
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise DataError(f"the weights in {checkpoint_dir} lack {shown}: the checkpoint is incomplete; save it again")
    model.to(device)
    model.eval()
    info = ClassifierInfo(
        problem_type=_problem_type(config),
        id2label={i: str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)},
        max_length=checkpoint_max_length(config, tokenizer),
        max_windows=checkpoint_max_windows(config),
    )
    return model, tokenizer, info


def _check_classifier_config(config, path: Path) -> None:
    architectures = getattr(config, "architectures", None) or []
    if not is_classifier_checkpoint(config):
        named = ", ".join(architectures) if architectures else "no architecture"
        raise ConfigError(
            f"{path} is not a text classifier (config.json names {named}, not a *ForSequenceClassification model): "
            f"fine-tune it first with `lmtune finetune` (model.checkpoint: {path}) and predict with the result"
        )
    problem = getattr(config, "problem_type", None)
    if problem is not None and problem not in PROBLEM_TYPES:
        raise ConfigError(f"{path / 'config.json'}: problem_type={problem!r} is not one of {', '.join(PROBLEM_TYPES)}")


def _problem_type(config) -> str:
    if config.problem_type is not None:
        return config.problem_type
    # transformers' own rule when problem_type is unset: one output is a regression
    return REGRESSION if config.num_labels == 1 else SINGLE_LABEL


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Reading inputs


def read_inputs(texts: list[str], input_file: str | None, text_column: str = "text") -> list[str]:
    """The texts to classify: the command-line texts, or the texts of one input file.

    `-` reads stdin and `.txt` a file, one text per non-empty line; `.jsonl` takes `text_column` of
    each object and `.csv`/`.tsv` that column of each row (one text per row, empty ones included, so
    results line up with rows).

    Raises:
        ConfigError: both texts and a file were given.
        DataError: nothing to predict, or the file is missing, malformed or lacks the column.
    """
    if texts and input_file is not None:
        raise ConfigError(
            f"got {len(texts)} text argument(s) and --input {input_file}: give texts as arguments or --input FILE, not both"
        )
    if input_file is None:
        if not texts:
            raise DataError(
                f"nothing to predict: give texts as arguments, --input FILE ({' '.join(INPUT_SUFFIXES)}), or --input - to read stdin"
            )
        return list(texts)
    if input_file == "-":
        try:
            lines = _lines(sys.stdin.read())
        except UnicodeDecodeError:
            raise DataError("stdin is not UTF-8 text: convert it, e.g. `iconv -f latin1 -t utf-8`") from None
        found = [line for line in lines if line.strip()]
        source = "stdin"
    else:
        path = Path(input_file)
        suffix = path.suffix.lower()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise DataError(f"--input {input_file} {what}: give a {' '.join(INPUT_SUFFIXES)} file, or - for stdin")
        if suffix not in INPUT_SUFFIXES:
            raise DataError(f"--input {input_file} has an unsupported type {suffix!r}: use one of {' '.join(INPUT_SUFFIXES)}")
        check_text_file(path)  # binary or non-UTF-8 content fails here, naming the byte offset
        if suffix == ".txt":
            found = [line for line in _lines(path.read_text(encoding="utf-8-sig")) if line.strip()]
        elif suffix == ".jsonl":
            found = _read_jsonl(path, text_column)
        else:
            found = _read_table(path, text_column, "\t" if suffix == ".tsv" else ",")
        source = str(path)
    if not found:
        raise DataError(f"{source} holds no text to predict")
    return found


def _lines(text: str) -> list[str]:
    """Split on newlines only (str.splitlines also splits inside a text at U+2028, U+0085 and others)."""
    return [line.rstrip("\r") for line in text.split("\n")]


def _read_jsonl(path: Path, column: str) -> list[str]:
    found = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not valid JSON ({exc.msg}): fix or remove the line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is a JSON {type(record).__name__}, not an object with a {column!r} field")
            if column not in record:
                keys = ", ".join(record) or "none"
                raise DataError(
                    f"{path} line {number} has no {column!r} field; its fields are {keys}: name the text field {column!r}"
                )
            value = record[column]
            if not isinstance(value, str):
                raise DataError(f"{path} line {number}: {column!r} is {json.dumps(value)}, not a string")
            found.append(value)
    return found


def _read_table(path: Path, column: str, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:  # utf-8-sig: a BOM would rename the first column
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        if column not in columns:
            names = ", ".join(repr(c) for c in columns) or "none"
            raise DataError(f"{path} has no column {column!r}; its columns are {names}: name the text column {column!r}")
        try:
            return [row[column] or "" for row in reader]
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num} is malformed ({exc}): fix the quoting on that line") from None


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """The CPU model with int8 weights in every linear layer (dynamic quantisation: each batch's
    activations are quantised on the fly), for `lmtune predict --precision int8`.

    Embeddings, normalisation and the classification head stay fp32: the head is tiny, and its
    logits are what the labels are read from.

    Raises:
        DeviceError: the model is not on the CPU, or this torch build has no int8 kernels.
    """
    if next(model.parameters()).device.type != "cpu":
        raise DeviceError("precision int8 runs on the CPU only: use --device cpu, or bf16/fp16 on a GPU")
    quantization = getattr(torch.ao, "quantization", None)
    quantize_dynamic = getattr(quantization, "quantize_dynamic", None)
    engines = set(torch.backends.quantized.supported_engines) - {"none"}
    if quantize_dynamic is None or not engines:
        raise DeviceError(f"this torch ({torch.__version__}) has no int8 dynamic quantisation: use --precision fp32")
    spec = {  # every linear layer but the classification head's (classifier.*, or score.* in some models)
        name: quantization.default_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[0] not in ("classifier", "score")
    }
    if not spec:
        raise DeviceError(f"{type(model).__name__} has no linear layers to quantise: use --precision fp32")
    with warnings.catch_warnings():  # torch >= 2.10 calls eager-mode quantisation deprecated; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, spec, dtype=torch.qint8)


# ----------------------------------------------------------------------------------------------
# Predicting


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    info: ClassifierInfo,
    texts: list[str],
    batch_size: int = 64,
    max_length: int | None = None,
    max_windows: int | None = None,
    all_scores: bool = False,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> list[dict]:
    """Classify `texts` in batches of similar length; the results come back in input order.

    Args:
        model, tokenizer, info: from `load_classifier`.
        texts: the texts to classify.
        batch_size: texts per forward pass.
        max_length: truncate inputs to this many tokens (None: the model's limit, `info.max_length`).
        max_windows: read a longer text as up to this many windows of max_length tokens and score
            the mean of their outputs (None: the model's own, `info.max_windows`; 1: truncate).
        all_scores: single-label only: add every label's probability as `scores`.
        device: where the inputs go (None: the model's device).
        precision: "fp32", or "bf16" (CPU/GPU) / "fp16" (GPU) autocast. For int8, pass the model
            through `quantize_int8` first and predict in "fp32".

    Returns:
        One dict per text. Single-label: `text`, `label`, `score` (its softmax probability) and, with
        `all_scores`, `scores` {label: probability}. Multi-label: `text`, `labels` (sigmoid >= 0.5) and
        `scores` {label: probability}. Regression: `text` and `score` (or `scores` {label: value} for
        a model with several outputs).

    Raises:
        ConfigError: a bad batch_size, max_length, max_windows or precision.
        DeviceError: fp16 on the CPU, or bf16 on a GPU without it (`devices.check_precision`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    if max_length is not None and not 1 <= max_length <= info.max_length:
        raise ConfigError(f"max_length={max_length} must be between 1 and the model's limit of {info.max_length} tokens")
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"max_windows={max_windows} must be at least 1")
    device = device or next(model.parameters()).device
    autocast = devices.on_device(device, precision).autocast()
    # one tokenization, batches of similar length (the same path as lmtune eval), input order restored
    encoded = encode_rows(tokenizer, texts, None, max_length or info.max_length, max_windows=max_windows or info.max_windows)
    model.eval()
    with torch.inference_mode(), autocast:
        scores = predict_scores(model, encoded, tokenizer.pad_token_id, batch_size, device)
    return [{"text": text, **result} for text, result in zip(texts, _results(info, scores, all_scores))]


def _results(info: ClassifierInfo, scores: np.ndarray, all_scores: bool) -> list[dict]:
    """Turn model outputs (`classifier_outputs`: probabilities, or values for regression) into
    result dicts (without the text)."""
    labels = info.labels
    if info.problem_type == REGRESSION:
        if scores.ndim == 1:
            return [{"score": float(v)} for v in scores]
        return [{"scores": dict(zip(labels, map(float, row)))} for row in scores]
    if info.problem_type == MULTI_LABEL:
        return [
            {"labels": [name for name, p in zip(labels, row) if p >= MULTI_LABEL_THRESHOLD], "scores": dict(zip(labels, map(float, row)))}
            for row in scores
        ]
    out = []
    for row in scores:
        k = int(row.argmax())
        result = {"label": labels[k], "score": float(row[k])}
        if all_scores:
            result["scores"] = dict(zip(labels, map(float, row)))
        out.append(result)
    return out
