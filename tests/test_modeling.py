"""Model helpers: the MLM loss, attention kernels and layer-wise learning rates."""

from __future__ import annotations

import torch
import pytest
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
)

from conftest import assert_same_grads
from lmtune.modeling import IGNORE_INDEX, auto_attention, mlm_loss, use_attention
from lmtune.stages.finetune import layerwise_groups

SIZES = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_mlm_loss_matches_the_full_head_loss_of_transformers():
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**SIZES)).eval()
    ids = torch.randint(5, 128, (4, 16))
    labels = torch.where(torch.rand(4, 16) < 0.3, ids, torch.full_like(ids, IGNORE_INDEX))
    ours, stats = mlm_loss(model, {"input_ids": ids, "labels": labels})
    theirs = model(input_ids=ids, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert int(stats["masked"]) == int((labels != IGNORE_INDEX).sum())
    assert 0 <= int(stats["correct"]) <= int(stats["masked"])


def _modernbert(sparse: bool) -> ModernBertForMaskedLM:
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        layer_types=["full_attention"] * 2, pad_token_id=0, sparse_prediction=sparse,
    )
    return ModernBertForMaskedLM(config)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_masked_only_head_gives_the_full_heads_loss_and_gradients(arch):
    """The optimised path (head on masked positions only) against the stock forward (head everywhere):
    the same loss and the same gradient for every weight, in training mode."""
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # train mode, same results
    ours_model = BertForMaskedLM(BertConfig(**SIZES, **no_dropout)) if arch == "bert" else _modernbert(sparse=True)
    stock = BertForMaskedLM(BertConfig(**SIZES, **no_dropout)) if arch == "bert" else _modernbert(sparse=False)
    stock.load_state_dict(ours_model.state_dict())
    ids = torch.randint(5, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.where(torch.rand(4, 16, generator=torch.Generator().manual_seed(2)) < 0.3, ids, torch.full_like(ids, IGNORE_INDEX))
    ours, _ = mlm_loss(ours_model.train(), {"input_ids": ids, "labels": labels})
    theirs = stock.train()(input_ids=ids, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    ours.backward()
    theirs.backward()
    assert_same_grads(stock, ours_model, atol=1e-5)


def test_fused_adamw_matches_the_plain_loop():
    """The engine's fused AdamW takes the same steps as the textbook for-loop implementation."""
    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = BertForMaskedLM(BertConfig(**SIZES))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=fused, foreach=None if fused else False)
        for step in range(3):
            ids = torch.randint(5, 128, (4, 16), generator=torch.Generator().manual_seed(step))
            labels = torch.where(ids % 3 == 0, ids, torch.full_like(ids, IGNORE_INDEX))
            loss, _ = mlm_loss(model, {"input_ids": ids, "labels": labels})
            loss.backward()
            opt.step()
            opt.zero_grad()
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*weights))


def test_auto_attention_is_eager_for_bert_and_for_modernbert_in_bf16_on_the_cpu():
    cpu = torch.device("cpu")
    assert use_attention(BertForMaskedLM(BertConfig(**SIZES)), "auto", cpu) == "eager"
    assert use_attention(BertForMaskedLM(BertConfig(**SIZES)), "auto", cpu, "bf16") == "eager"
    assert use_attention(_modernbert(sparse=True), "auto", cpu) == "sdpa"
    assert use_attention(_modernbert(sparse=True), "auto", cpu, "bf16") == "eager"
    assert use_attention(_modernbert(sparse=True), "sdpa", cpu, "bf16") == "sdpa"
    assert use_attention(_modernbert(sparse=True), "eager", cpu) == "eager"
    assert auto_attention("modernbert", torch.device("cuda"), "bf16") == auto_attention("bert", "cuda", "bf16") == "sdpa"


def test_modernbert_eager_and_sdpa_agree_on_padded_batches_and_gradients():
    """The kernel auto picks for ModernBERT in bf16 computes what its SDPA does (checked in fp32)."""
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        layer_types=["full_attention"] * 2, pad_token_id=0, num_labels=3,
    )
    eager, sdpa = ModernBertForSequenceClassification(config), ModernBertForSequenceClassification(config)
    sdpa.load_state_dict(eager.state_dict())
    eager.set_attn_implementation("eager")
    sdpa.set_attn_implementation("sdpa")
    ids = torch.randint(5, 128, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    labels = torch.tensor([0, 1, 2])
    a = eager.train()(input_ids=ids, attention_mask=mask, labels=labels)
    b = sdpa.train()(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(sdpa, eager, atol=1e-5)


def test_eager_and_sdpa_attention_agree_on_padded_batches():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**SIZES, num_labels=3)).eval()
    ids = torch.randint(5, 128, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    assert use_attention(model, "sdpa", torch.device("cpu")) == "sdpa"
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=mask).logits
    assert use_attention(model, "auto", torch.device("cpu")) == "eager"
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(sdpa, eager, atol=1e-5)


def test_layerwise_lr_decay_scales_lower_layers_down():
    model = BertForSequenceClassification(BertConfig(**SIZES, num_labels=2))
    groups = layerwise_groups(model, weight_decay=0.01, decay=0.5)
    scale_of = {}
    for group in groups:
        for param in group["params"]:
            scale_of[id(param)] = group["lr_scale"]
    named = dict(model.named_parameters())
    assert scale_of[id(named["classifier.weight"])] == 1.0
    assert scale_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == 0.5
    assert scale_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == 0.25
    assert scale_of[id(named["bert.embeddings.word_embeddings.weight"])] == 0.125
    assert len(scale_of) == len(named)  # every parameter in exactly one group
    decays = {g["weight_decay"] for g in groups if any(p.ndim < 2 for p in g["params"])}
    assert decays == {0.0}
