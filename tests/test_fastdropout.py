"""lmtune.fastdropout: the CPU dropout drops what F.dropout would, in law, and changes nothing else."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from conftest import assert_same_grads
from lmtune import fastdropout
from lmtune.modeling import use_attention

SIZES = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_mask_drops_a_share_p_of_elements_in_every_position(p):
    torch.manual_seed(0)
    keep = fastdropout.keep_mask(torch.Size([4096, 256]), p, CPU)
    assert keep.dtype == torch.bool
    assert abs((~keep).float().mean().item() - p) < 0.003
    # each of the four 16-bit lanes of a 64-bit draw is used: a lane stuck at one sign would skew every 4th column
    by_lane = (~keep).float().view(-1, 4).mean(0)
    assert torch.allclose(by_lane, torch.full((4,), p), atol=0.006), by_lane


def test_forward_and_backward_scale_kept_elements_and_zero_the_rest():
    torch.manual_seed(0)
    x = (torch.rand(64, 33) + 0.5).requires_grad_()  # odd size: the last 64-bit draw is cut
    y = fastdropout.fast_dropout(x, 0.25, training=True)
    kept = y != 0
    assert 0.15 < 1 - kept.float().mean().item() < 0.35
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.backward(torch.full_like(y, 3.0))
    assert torch.allclose(x.grad, kept.float() * 3.0 / 0.75)


def test_bf16_stays_bf16_and_eval_or_p_zero_is_the_identity():
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    assert fastdropout.fast_dropout(x, 0.1, training=True).dtype == torch.bfloat16
    assert fastdropout.fast_dropout(x, 0.1, training=False) is x
    assert fastdropout.fast_dropout(x, 0.0, training=True) is x


def test_the_same_seed_gives_the_same_mask():
    masks = []
    for _ in range(2):
        torch.manual_seed(3)
        masks.append(fastdropout.keep_mask(torch.Size([100, 7]), 0.1, CPU))
    assert torch.equal(*masks)


def _batch():
    ids = torch.randint(5, 128, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": torch.tensor([0, 1, 2])}


def test_bert_with_it_computes_what_stock_eager_bert_does_without_dropout():
    """With dropout 0, in training mode, lmtune's attention function gives transformers' eager loss and gradients."""
    torch.manual_seed(0)
    config = BertConfig(**SIZES, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours, stock = BertForSequenceClassification(config), BertForSequenceClassification(config)
    stock.load_state_dict(ours.state_dict())
    assert use_attention(ours, "auto", CPU) == "eager"
    assert ours.config._attn_implementation == fastdropout.ATTENTION
    stock.set_attn_implementation("eager")
    a, b = ours.train()(**_batch()).loss, stock.train()(**_batch()).loss
    assert torch.allclose(a, b, atol=1e-6)
    a.backward()
    b.backward()
    assert_same_grads(stock, ours, atol=1e-6)


def test_dropout_is_on_in_training_off_in_eval_and_the_saved_checkpoint_is_plain(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**SIZES, num_labels=3, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    assert fastdropout.install(model, CPU)
    assert any(isinstance(m, fastdropout.FastDropout) for m in model.modules())
    batch = _batch()
    model.train()
    assert not torch.equal(model(**batch).logits, model(**batch).logits)  # two dropout draws
    model.eval()
    with torch.no_grad():
        ours = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert "lmtune" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not any(isinstance(m, fastdropout.FastDropout) for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, ours, atol=1e-6)


def test_nothing_changes_off_the_cpu_or_without_dropout():
    model = BertForSequenceClassification(BertConfig(**SIZES, num_labels=2))
    assert not fastdropout.install(model, "cuda")
    assert not any(isinstance(m, fastdropout.FastDropout) for m in model.modules())
    quiet = BertForSequenceClassification(BertConfig(**SIZES, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    quiet.set_attn_implementation("eager")
    assert not fastdropout.install(quiet, CPU)


def test_training_loss_under_it_matches_torch_dropout_on_average():
    """Same law: averaged over many draws, a BERT's training loss under both dropouts agrees."""
    torch.manual_seed(0)
    config = BertConfig(**SIZES, num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    ours, stock = BertForSequenceClassification(config).train(), BertForSequenceClassification(config).train()
    stock.load_state_dict(ours.state_dict())
    stock.set_attn_implementation("eager")
    fastdropout.install(ours, CPU)
    batch = _batch()
    with torch.no_grad():
        a = torch.stack([ours(**batch).logits for _ in range(400)])
        b = torch.stack([stock(**batch).logits for _ in range(400)])
    assert torch.allclose(a.mean(0), b.mean(0), atol=0.05)
    assert torch.allclose(a.std(0), b.std(0), rtol=0.25, atol=0.02)
    assert F.mse_loss(a.std(0), torch.zeros_like(a.std(0))) > 1e-4  # dropout really acts
