"""Build masked language models from presets, check them against their tokenizer, and compute the
MLM loss at masked positions only.

The models are plain `BertForMaskedLM` / `RobertaForMaskedLM` / `ModernBertForMaskedLM`, so a saved checkpoint loads with
`AutoModelForMaskedLM` and `pipeline("fill-mask")` without lmtune. Only the loss is ours: it runs the
encoder, gathers the masked positions and applies the vocabulary head to those alone (about 15% of
the tokens), which skips most of the head's cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from typing import Any

import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForMaskedLM,
)

from lmtune import fastdropout
from lmtune.config import ModelSection, resolved_model_sizes
from lmtune.errors import ConfigError
from lmtune.labels import HF_PROBLEM_TYPES, LabelSpec
from lmtune.tokenization import round_up

IGNORE_INDEX = -100

log = logging.getLogger(__name__)


_MASKED_LM: dict[str, type[PreTrainedModel]] = {
    "bert": BertForMaskedLM,
    "roberta": RobertaForMaskedLM,
    "modernbert": ModernBertForMaskedLM,
}


def build_mlm(m: ModelSection, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A freshly initialised masked LM of `mlm_config(m, tokenizer)`, its weights drawn from `seed`."""
    config = mlm_config(m, tokenizer)
    torch.manual_seed(seed)
    return _MASKED_LM[m.arch](config)


def init_from_config(path: str) -> PretrainedConfig:
    """The config of a `model.init_from` checkpoint, refused unless it is a masked LM lmtune can train."""
    if not Path(path).is_dir():
        raise ConfigError(f"model.init_from={path!r} is not a directory: give a local checkpoint dir, e.g. runs/cpu-hour/final")
    config = checkpoint_config(path)
    if config.model_type not in _MASKED_LM:
        raise ConfigError(
            f"model.init_from={path!r} is a {config.model_type} checkpoint; lmtune pretrains {', '.join(_MASKED_LM)} models"
        )
    if is_classifier_checkpoint(config):
        raise ConfigError(
            f"model.init_from={path!r} is a fine-tuned classifier: continue pretraining from the masked LM it was "
            "fine-tuned from (a pretrain run's final/)"
        )
    return config


def load_mlm(m: ModelSection, config: PretrainedConfig) -> PreTrainedModel:
    """The masked LM of `model.init_from` (`config`: its `init_from_config`), to pretrain further: its
    own architecture and sizes, dropout as for a new model (model.dropout, else none). A checkpoint
    saved without a masked-LM head (a sentence-embedding model, say) gets a new one, with a warning."""
    dropout = dropout_fields(config, 0.0 if m.dropout is None else m.dropout)
    model, info = _MASKED_LM[config.model_type].from_pretrained(m.init_from, output_loading_info=True, **dropout)
    if not has_masked_lm_head(config) or info["missing_keys"]:
        log.warning("model.init_from=%s has no masked-LM head: a new one starts from random weights", m.init_from)
    return model


def mlm_config(m: ModelSection, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The config of a masked LM sized by the preset and explicit sizes, matched to `tokenizer`.

    The embedding table rounds the tokenizer's size up to a multiple of 64.
    """
    sizes = resolved_model_sizes(m)
    dropout = 0.0 if m.dropout is None else m.dropout
    if m.arch == "modernbert":
        return modernbert_config(m, tokenizer, sizes, dropout)
    offset = 2 if m.arch == "roberta" else 0
    common = dict(
        vocab_size=round_up(len(tokenizer), 64),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=m.max_position_embeddings or 512 + offset,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **sizes,
        **m.hf_config,
    )
    if m.arch == "bert":
        return BertConfig(**common)
    return RobertaConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, type_vocab_size=1, **common
    )


def modernbert_config(
    m: ModelSection, tokenizer: PreTrainedTokenizerBase, sizes: dict[str, Any], dropout: float
) -> ModernBertConfig:
    """ModernBERT sized like the preset: its gated feed-forward (GeGLU) has two input projections,
    so the preset's width shrinks to 2/3 (rounded to 64) to keep the parameter count, unless
    model.intermediate_size is set. Every layer attends globally (sequences here are short), and
    classification pools the mean of the tokens (a short MLM pretraining does not train [CLS])."""
    sizes = dict(sizes)
    if m.intermediate_size is None:
        sizes["intermediate_size"] = round_up(2 * sizes["intermediate_size"] // 3, 64)
    fields: dict[str, Any] = dict(
        vocab_size=round_up(len(tokenizer), 64),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        max_position_embeddings=m.max_position_embeddings or 512,
        layer_types=["full_attention"] * sizes["num_hidden_layers"],
        embedding_dropout=dropout,
        attention_dropout=dropout,
        mlp_dropout=dropout,
        sparse_prediction=True,  # `model(input_ids, labels=...)` runs the head on masked tokens only
        classifier_pooling="mean",
        **sizes,
    )
    fields.update(m.hf_config)
    return ModernBertConfig(**fields)


def use_attention(model: PreTrainedModel, choice: str, device: Any, precision: str = "fp32") -> str:
    """Switch the attention kernel. `auto` means SDPA, except on the CPU for BERT and RoBERTa, whose
    eager attention trained faster than PyTorch's fused SDPA backward, and for ModernBERT under bf16
    autocast, where eager trained 1.17-1.25x faster (in fp32 SDPA was as fast or 1.10x faster): all
    measured in docs/PERFORMANCE.md.
    On the CPU, dropout then goes through lmtune.fastdropout (masks of the same law from a quarter of the
    random draws; PyTorch's own CPU dropout took nearly half of a BERT fine-tuning step).
    Returns the kernel's name.
    """
    kind = choice if choice != "auto" else auto_attention(model.config.model_type, device, precision)
    model.set_attn_implementation(kind)
    fastdropout.install(model, device)
    return kind


def auto_attention(model_type: str, device: Any, precision: str) -> str:
    """What `model.attention: auto` picks (see use_attention)."""
    if getattr(device, "type", device) != "cpu":
        return "sdpa"
    if model_type == "modernbert":
        return "eager" if precision == "bf16" else "sdpa"
    return "eager"


def check_compatible(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """Refuse a tokenizer and model config that disagree (vocab, special ids, position limit)."""
    cfg = model.config
    problems = []
    if len(tokenizer) > cfg.vocab_size:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {cfg.vocab_size}")
    if tokenizer.pad_token_id != cfg.pad_token_id:
        problems.append(f"pad token id: tokenizer {tokenizer.pad_token_id}, model {cfg.pad_token_id}")
    for name in ("mask_token_id", "cls_token_id", "sep_token_id", "unk_token_id"):
        value = getattr(tokenizer, name)
        if value is not None and value >= cfg.vocab_size:
            problems.append(f"{name}={value} is outside the model's vocabulary of {cfg.vocab_size}")
    # RoBERTa numbers positions from pad_token_id + 1, so it loses pad_token_id + 1 positions
    offset = cfg.pad_token_id + 1 if cfg.model_type == "roberta" else 0
    if max_length + offset > cfg.max_position_embeddings:
        problems.append(
            f"data.max_length={max_length} needs {max_length + offset} positions but the model has "
            f"{cfg.max_position_embeddings}"
        )
    if cfg.model_type == "roberta":
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(tokenizer, name) != getattr(cfg, name):
                problems.append(f"{name}: tokenizer {getattr(tokenizer, name)}, model {getattr(cfg, name)}")
    if problems:
        raise ConfigError("the tokenizer and the model disagree: " + "; ".join(problems))


def mlm_head(model: PreTrainedModel) -> torch.nn.Module:
    """The vocabulary head (transform + decoder) of a BERT, RoBERTa or ModernBERT masked LM."""
    if isinstance(model, ModernBertForMaskedLM):
        return torch.nn.Sequential(model.head, model.decoder)
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no masked-LM head")
    return head


def mlm_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy over masked positions only.

    Args:
        batch: `input_ids` (B, L) with masks applied, `labels` (B, L) with -100 where nothing is predicted.

    Returns:
        (mean loss, stats) where stats holds `masked` (count) and, in eval mode, `correct` (argmax hits).
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    hidden = model.base_model(input_ids=input_ids).last_hidden_state  # (B, L, H); packed: no padding mask
    selected = labels != IGNORE_INDEX  # (B, L)
    logits = mlm_head(model)(hidden[selected])  # (N, V): the head runs on masked positions only
    targets = labels[selected]  # (N,)
    loss = F.cross_entropy(logits.float(), targets)
    stats = {"masked": targets.new_tensor(targets.numel())}
    if not model.training:  # accuracy is for evaluation; training steps skip the argmax
        stats["correct"] = (logits.argmax(dim=-1) == targets).sum()
    return loss, stats


def evaluate_mlm(model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> dict[str, float]:
    """Masked-token loss, perplexity and accuracy over `batches` (call under inference mode)."""
    total_loss, masked, correct = 0.0, 0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, stats = mlm_loss(model, batch)
        n = int(stats["masked"])
        total_loss += float(loss) * n
        masked += n
        correct += int(stats["correct"])
    if masked == 0:
        raise ValueError("no masked tokens to evaluate")
    mean = total_loss / masked
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "masked_accuracy": correct / masked}


# ----------------------------------------------------------------------------------------------
# Classification


def checkpoint_max_length(config: Any, tokenizer: Any) -> int:
    """The input length a checkpoint takes: its tokenizer's `model_max_length` (lmtune's fine-tuning sets
    it to the `data.max_length` trained on; often unset, i.e. huge, elsewhere) capped by the position table."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return int(tokenizer.model_max_length)
    # RoBERTa numbers positions from pad_token_id + 1, so it loses pad_token_id + 1 of them (2 in practice)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= (config.pad_token_id if config.pad_token_id is not None else 1) + 1
    return int(min(tokenizer.model_max_length, positions))


# config.json key under which a classifier fine-tuned with data.max_windows > 1 keeps it
MAX_WINDOWS_KEY = "lmtune_max_windows"


def checkpoint_max_windows(config: Any) -> int:
    """How many windows of its input length a classifier reads of a long text: the `data.max_windows`
    lmtune fine-tuned it with (kept in its config.json), else 1 (cut at the input length)."""
    value = getattr(config, MAX_WINDOWS_KEY, None)
    return int(value) if isinstance(value, int) and value >= 1 else 1


def is_classifier_checkpoint(config: Any) -> bool:
    """True when a checkpoint config describes a sequence-classification model."""
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def has_masked_lm_head(config: Any) -> bool:
    """True when a checkpoint config describes a model with a masked-LM head (or says nothing of its
    architecture). Encoders saved without one (an ELECTRA discriminator, a sentence-embedding model)
    would get a random head, and a perplexity that means nothing."""
    names = getattr(config, "architectures", None) or []
    return not names or any(
        n.endswith("ForMaskedLM") or (n.endswith("ForPreTraining") and config.model_type != "electra") for n in names
    )


def checkpoint_config(checkpoint: str, trust_remote_code: bool = False) -> Any:
    """A checkpoint's config, with a clear error when it needs code the user has not trusted."""
    try:
        return AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(
                f"model.checkpoint={checkpoint!r} ships its own Python code, which lmtune does not run unless the "
                "config sets model.trust_remote_code: true (do that only for checkpoints you trust)"
            ) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.checkpoint={checkpoint!r}: cannot read its config.json ({first})") from None


def load_for_finetuning(
    checkpoint: str, spec: LabelSpec, dropout: float | None, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, str]:
    """A sequence classifier from `checkpoint` with a head sized for `spec`.

    Returns:
        (model, note) where note says whether the head is new or reused.
    """
    config = checkpoint_config(checkpoint, trust_remote_code)
    reuse = is_classifier_checkpoint(config) and config.num_labels == spec.num_labels and dict(config.label2id or {}) == spec.label2id
    overrides: dict[str, Any] = {
        "num_labels": spec.num_labels,
        "id2label": spec.id2label,
        "label2id": spec.label2id,
        "problem_type": HF_PROBLEM_TYPES[spec.problem],
    }
    if dropout is not None:
        overrides.update(dropout_fields(config, dropout), classifier_dropout=dropout)
    elif config.model_type != "modernbert" and getattr(config, "hidden_dropout_prob", 0.1) == 0.0:
        # BERT checkpoints pretrained without dropout (lmtune's default) fine-tune better with the usual 0.1
        overrides.update(dropout_fields(config, 0.1))
    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, ignore_mismatched_sizes=not reuse, trust_remote_code=trust_remote_code, **overrides
    )
    kind = "its classification head" if reuse else f"a new classification head ({spec.num_labels} outputs)"
    source = ", ".join(getattr(config, "architectures", None) or [config.model_type])
    return model, f"loaded {source} from {checkpoint} with {kind}"


def dropout_fields(config: Any, p: float) -> dict[str, float]:
    """The config fields that set the encoder's dropout, by architecture."""
    if config.model_type == "modernbert":
        return {"embedding_dropout": p, "attention_dropout": p, "mlp_dropout": p}
    return {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}


def classification_loss(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], problem: str, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy (single-label, optionally class-weighted), BCE (multi-label) or MSE (regression)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()  # (B, num_labels)
    labels = batch["labels"]
    if problem == "single_label":
        loss = F.cross_entropy(logits, labels, weight=None if weights is None else weights.to(logits.device))
    elif problem == "multi_label":
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
    else:
        loss = F.mse_loss(logits.squeeze(-1), labels.float())
    return loss, {}


def classifier_outputs(model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> np.ndarray:
    """Scores for every row, in batch order: softmax probabilities (single-label), sigmoid
    probabilities (multi-label) or the raw value (regression). Call under inference mode."""
    problem = model.config.problem_type
    outputs = []
    with head_in_fp32(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits.float()
            if problem == "multi_label_classification":
                scores = torch.sigmoid(logits)
            elif problem == "regression" or model.config.num_labels == 1:
                scores = logits.squeeze(-1)
            else:
                scores = torch.softmax(logits, dim=-1)
            outputs.append(scores.cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0,))


@contextmanager
def head_in_fp32(model: PreTrainedModel) -> Iterator[None]:
    """Under bf16/fp16 autocast, compute the last layer (`classifier`, or `score`) in fp32: the encoder
    keeps the speed of autocast, and the outputs keep fp32's resolution instead of bf16's 3
    significant digits (a regression value, a close pair of logits). Nothing changes outside autocast."""
    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    device_type = next(model.parameters()).device.type
    if not isinstance(head, torch.nn.Module) or "forward" in vars(head) or not torch.is_autocast_enabled(device_type):
        yield
        return
    forward = head.forward

    def fp32_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args), **kwargs)

    head.forward = fp32_forward
    try:
        yield
    finally:
        del head.forward  # back to the class's own forward
