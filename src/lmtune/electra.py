"""ELECTRA's replaced-token detection as a pretraining objective (`mlm.objective: electra`).

A small generator (a masked LM with the model's width and `mlm.generator_layers` layers, sharing the
model's token embeddings) predicts the selected tokens as in masked-LM pretraining; its samples
replace them, and the model being trained (the discriminator) classifies every token of the result as
original or replaced. The discriminator learns from all the tokens of a block instead of the ~15%
that masked-LM pretraining predicts, which is what makes the objective pay on a small budget (Clark
et al., 2020).

What is saved as the run's checkpoint is the discriminator: a plain Hugging Face token classifier
(`ModernBertForTokenClassification`, `BertForTokenClassification`, ... with one label, "replaced")
whose encoder and head transform `AutoModelForSequenceClassification` and `lmtune finetune` load as
they load a masked LM's. It has no masked-LM head, so it is not a `fill-mask` model. The generator
lives only in the training checkpoints (checkpoints/step-N), for resuming.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification, PreTrainedModel, PreTrainedTokenizerBase

from lmtune.config import ModelSection
from lmtune.modeling import IGNORE_INDEX, build_mlm, mlm_config, mlm_head


class ElectraPretrainer(torch.nn.Module):
    """The generator, the discriminator's encoder and its replaced-token head, trained together."""

    def __init__(self, generator: PreTrainedModel, discriminator: PreTrainedModel, discriminator_weight: float) -> None:
        super().__init__()
        self.generator = generator  # a *ForMaskedLM whose token embeddings are the discriminator's
        self.discriminator = discriminator  # a *ForTokenClassification with one logit a token: what is kept
        self.discriminator_weight = discriminator_weight

    @property
    def base_model(self) -> PreTrainedModel:
        """The encoder being pretrained (what the probe reads and `train.compile` compiles)."""
        return self.discriminator.base_model

    @property
    def config(self) -> Any:
        return self.discriminator.config

    def set_attn_implementation(self, kind: str) -> None:
        self.generator.set_attn_implementation(kind)
        self.discriminator.set_attn_implementation(kind)


def build_electra(
    m: ModelSection, tokenizer: PreTrainedTokenizerBase, seed: int, generator_layers: int, discriminator_weight: float
) -> ElectraPretrainer:
    """A discriminator sized by the preset and a `generator_layers`-layer generator of the same width
    that shares its token embeddings (and uses them as its output layer, as ELECTRA does)."""
    config = mlm_config(m, tokenizer)
    config.update({"num_labels": 1, "id2label": {0: "replaced"}, "label2id": {"replaced": 0}})
    torch.manual_seed(seed)
    discriminator = AutoModelForTokenClassification.from_config(config)
    generator = build_mlm(m.model_copy(update={"num_hidden_layers": generator_layers}), tokenizer, seed + 1)
    shared = discriminator.get_input_embeddings()
    generator.set_input_embeddings(shared)
    generator.get_output_embeddings().weight = shared.weight
    return ElectraPretrainer(generator, discriminator, discriminator_weight)


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits` (N, V), drawn from its softmax (Gumbel-max). `generator` None
    draws from torch's global generator, which training checkpoints save, so a resumed run draws alike."""
    uniform = torch.rand(logits.shape, generator=generator, device="cpu" if generator is not None else logits.device)
    gumbel = -torch.log(-torch.log(uniform.to(logits.device).clamp(1e-9, 1.0 - 1e-7)))
    return (logits.float() + gumbel).argmax(dim=-1)


def _forward(
    model: ElectraPretrainer, batch: dict[str, torch.Tensor], generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    input_ids, labels = batch["input_ids"], batch["labels"]  # (B, L): masks applied; -100 where not selected
    selected = labels != IGNORE_INDEX  # (B, L)
    gen_hidden = model.generator.base_model(input_ids=input_ids).last_hidden_state  # (B, L, H)
    gen_logits = mlm_head(model.generator)(gen_hidden[selected]).float()  # (N, V): selected positions only
    targets = labels[selected]  # (N,)
    gen_loss = F.cross_entropy(gen_logits, targets)
    with torch.no_grad():
        original = torch.where(selected, labels, input_ids)  # (B, L): the text before masking
        corrupted = original.clone()
        corrupted[selected] = sample_tokens(gen_logits.detach(), generator)
        replaced = corrupted != original  # a sampled original token counts as original (as in ELECTRA)
    disc_logits = model.discriminator(input_ids=corrupted).logits.squeeze(-1).float()  # (B, L); packed: no padding
    disc_loss = F.binary_cross_entropy_with_logits(disc_logits, replaced.float())
    loss = gen_loss + model.discriminator_weight * disc_loss
    stats = {"generator_loss": gen_loss.detach(), "discriminator_loss": disc_loss.detach(), "masked": targets.new_tensor(targets.numel())}
    if not model.training:
        guessed = disc_logits > 0
        stats.update(
            generator_correct=(gen_logits.argmax(dim=-1) == targets).sum(),
            tokens=replaced.new_tensor(replaced.numel(), dtype=torch.long),
            detected=(guessed == replaced).sum(),
            replaced=replaced.sum(),
            replaced_found=(guessed & replaced).sum(),
        )
    return loss, stats


def electra_loss(model: ElectraPretrainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's masked-LM loss plus `discriminator_weight` x the replaced-token loss (over every token).

    Args:
        batch: `input_ids` (B, L) with masks applied, `labels` (B, L) with -100 where nothing is predicted.
    """
    return _forward(model, batch, None)


def evaluate_electra(
    model: ElectraPretrainer, batches: Iterable[dict[str, torch.Tensor]], device: torch.device, seed: int = 0
) -> dict[str, float]:
    """Validation metrics (call under inference mode): the combined loss, the generator's perplexity and
    masked-token accuracy, and the discriminator's accuracy over all tokens and its recall of the
    replaced ones. The generator's samples come from a generator seeded by `seed`, so every evaluation
    sees the same replacements for the same model."""
    rng = torch.Generator().manual_seed(seed)
    loss_sum = gen_sum = disc_sum = 0.0
    masked = gen_correct = tokens = detected = replaced = found = batches_seen = 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, stats = _forward(model, batch, rng)
        n = int(stats["masked"])
        loss_sum += float(loss)
        gen_sum += float(stats["generator_loss"]) * n
        disc_sum += float(stats["discriminator_loss"])
        masked += n
        gen_correct += int(stats["generator_correct"])
        tokens += int(stats["tokens"])
        detected += int(stats["detected"])
        replaced += int(stats["replaced"])
        found += int(stats["replaced_found"])
        batches_seen += 1
    if masked == 0:
        raise ValueError("no masked tokens to evaluate")
    gen_loss = gen_sum / masked
    return {
        "loss": loss_sum / batches_seen,
        "perplexity": math.exp(min(gen_loss, 50.0)),  # the generator's
        "masked_accuracy": gen_correct / masked,  # the generator's
        "discriminator_loss": disc_sum / batches_seen,
        "replaced_accuracy": detected / tokens,  # original-or-replaced, every token
        "replaced_recall": found / replaced if replaced else 0.0,
    }
