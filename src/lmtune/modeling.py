"""Build masked language models from presets, check them against their tokenizer, and compute the
MLM loss at masked positions only.

The models are plain `BertForMaskedLM` / `RobertaForMaskedLM`, so a saved checkpoint loads with
`AutoModelForMaskedLM` and `pipeline("fill-mask")` without lmtune. Only the loss is ours: it runs the
encoder, gathers the masked positions and applies the vocabulary head to those alone (about 15% of
the tokens), which skips most of the head's cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase, RobertaConfig, RobertaForMaskedLM

from lmtune.config import ModelSection, resolved_model_sizes
from lmtune.errors import ConfigError
from lmtune.tokenization import round_up

IGNORE_INDEX = -100


def build_mlm(m: ModelSection, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A freshly initialised masked LM sized by the preset and explicit sizes, matched to `tokenizer`.

    The embedding table rounds the tokenizer's size up to a multiple of 64.
    """
    sizes = resolved_model_sizes(m)
    dropout = 0.0 if m.dropout is None else m.dropout
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
    torch.manual_seed(seed)
    if m.arch == "bert":
        config = BertConfig(**common)
        model: PreTrainedModel = BertForMaskedLM(config)
    else:
        config = RobertaConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, type_vocab_size=1, **common
        )
        model = RobertaForMaskedLM(config)
    return model


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
    """The vocabulary head (transform + decoder) of a BERT or RoBERTa masked LM."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no masked-LM head")
    return head


def mlm_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy over masked positions only.

    Args:
        batch: `input_ids` (B, L) with masks applied, `labels` (B, L) with -100 where nothing is predicted.

    Returns:
        (mean loss, stats) where stats holds `masked` (count) and `correct` (argmax hits), as tensors.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    hidden = model.base_model(input_ids=input_ids).last_hidden_state  # (B, L, H); packed: no padding mask
    selected = labels != IGNORE_INDEX  # (B, L)
    logits = mlm_head(model)(hidden[selected])  # (N, V): the head runs on masked positions only
    targets = labels[selected]  # (N,)
    loss = F.cross_entropy(logits.float(), targets)
    with torch.no_grad():
        correct = (logits.argmax(dim=-1) == targets).sum()
    return loss, {"masked": targets.new_tensor(targets.numel()), "correct": correct}


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
